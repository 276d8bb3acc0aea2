"""CLI: the request register (requests add|list|extend|decide). Being written this session."""

from __future__ import annotations


def register(main) -> None:
    """Add the commands to the main group."""
