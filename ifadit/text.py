"""Plain-text tables for the command line."""

from __future__ import annotations

from collections.abc import Sequence


def format_rows(rows: Sequence[tuple[str, str]]) -> str:
    """Two aligned columns, indented: what ``ifadit demo`` and ``ifadit score`` print."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
