"""Small pieces of user-facing wording shared by the command line and the nodes."""

from __future__ import annotations


def quantity(number: int, noun: str) -> str:
    """'1 clip', '3 clips', '0 songs' (nouns that take a plain 's')."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
