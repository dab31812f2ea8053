"""chainkit: package LangChain chains with MLflow and run them offline from recorded traffic.

The public API, imported on first use so that ``chainkit --help`` stays fast::

    from toolkit import use_cassette
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Cassette": "toolkit.cassette",
    "ChainkitError": "toolkit.errors",
    "EvalOptions": "toolkit.evaluation",
    "Interaction": "toolkit.cassette",
    "RecordMode": "toolkit.replay",
    "collect_exchanges": "toolkit.exchanges",
    "discover": "toolkit.discovery",
    "evaluate": "toolkit.evaluation",
    "log_chains": "toolkit.packaging",
    "use_cassette": "toolkit.replay",
}

__all__ = [
    "Cassette",
    "ChainkitError",
    "EvalOptions",
    "Interaction",
    "RecordMode",
    "__version__",
    "collect_exchanges",
    "discover",
    "evaluate",
    "log_chains",
    "use_cassette",
]

if TYPE_CHECKING:
    from toolkit.cassette import Cassette, Interaction
    from toolkit.discovery import discover
    from toolkit.errors import ChainkitError
    from toolkit.evaluation import EvalOptions, evaluate
    from toolkit.exchanges import collect_exchanges
    from toolkit.packaging import log_chains
    from toolkit.replay import RecordMode, use_cassette


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
