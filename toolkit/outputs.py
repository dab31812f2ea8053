"""What a chain returned, as plain JSON-ready data: the one normalisation that ``chainkit run``,
evaluation rows and the logged signature all apply, so the three never disagree."""

from __future__ import annotations

import json
from typing import Any


def plain_output(output: Any) -> Any:
    """A message's ``content``, a pydantic model dumped, langchain's ``str`` subclasses as ``str``;
    anything that is still not JSON becomes its ``str``."""
    content = getattr(output, "content", None)
    if content is not None:
        output = content
    if hasattr(output, "model_dump"):
        output = output.model_dump()
    try:
        return json.loads(json.dumps(output))
    except (TypeError, ValueError):
        return str(output)


__all__ = ["plain_output"]
