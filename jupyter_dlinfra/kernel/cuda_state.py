"""Has CUDA already been initialised in this process? Then CUDA_VISIBLE_DEVICES is fixed."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["cuda_initialised"]


def cuda_initialised(maps_path: Path = Path("/proc/self/maps")) -> str | None:
    """Evidence, in words, that CUDA is already set up here; None when it is not.

    The driver reads CUDA_VISIBLE_DEVICES once, at initialisation, and every framework initialises
    it through libcuda: once that library is mapped into the process, a new value may be ignored.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return "PyTorch has initialised CUDA"
        except Exception:  # a broken torch install must not break %gpu
            pass
    try:
        maps = maps_path.read_text()
    except OSError:
        return None
    if "libcuda.so" in maps:
        return "the CUDA driver (libcuda) is loaded in this process"
    return None
