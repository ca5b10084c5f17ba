"""Job backends: where batch jobs run (local processes, SLURM, Kubernetes)."""

from jupyter_dlinfra.backends.base import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)

__all__ = ["BackendError", "BackendState", "BackendStatus", "JobBackend", "JobHandle", "JobLaunch"]
