"""Parking idle kernels' GPUs with their state kept: CUDA checkpointing, real or simulated.

A parked process keeps running on the CPU while its GPU memory waits in host memory and every GPU
resource it held is released; resuming brings the memory back at the same addresses, on the same
GPU. ``CudaCheckpointer`` does it through the NVIDIA driver, ``SimulatedCheckpointer`` stands in
on machines without GPUs. Nothing here decides when to park: that is the caller's.
"""

from __future__ import annotations

from jupyter_dlinfra.checkpoint.base import (
    STATES,
    Checkpointer,
    CheckpointFailed,
    ParkRefused,
    Toggle,
    host_memory_needed,
    host_memory_refusal,
    process_tree_refusal,
)
from jupyter_dlinfra.checkpoint.cuda import CudaCheckpointer, capability_refusal
from jupyter_dlinfra.checkpoint.simulated import (
    SIMULATED_CHECKPOINT_FILE_ENV,
    SimulatedCheckpointer,
)

__all__ = [
    "SIMULATED_CHECKPOINT_FILE_ENV",
    "STATES",
    "CheckpointFailed",
    "Checkpointer",
    "CudaCheckpointer",
    "ParkRefused",
    "SimulatedCheckpointer",
    "Toggle",
    "capability_refusal",
    "host_memory_needed",
    "host_memory_refusal",
    "process_tree_refusal",
]
