"""Small pieces of the sentences people are told (reasons, conflicts, notices)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, word: str) -> str:
    """``plural(1, "GPU")`` -> "1 GPU", ``plural(2, "GPU")`` -> "2 GPUs"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
