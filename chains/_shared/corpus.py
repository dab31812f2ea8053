"""The small document corpus the `rag` chain retrieves from (corpus.md beside this file)."""

from pathlib import Path

CORPUS = Path(__file__).with_name("corpus.md")


def load_corpus() -> list[str]:
    """The corpus's paragraphs, one document each."""
    return [part.strip() for part in CORPUS.read_text(encoding="utf-8").split("\n\n") if part.strip()]
