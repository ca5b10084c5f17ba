"""Job backends: where batch jobs run (local processes, SLURM, Kubernetes)."""

from .base import BackendError, BackendState, BackendStatus, JobBackend, JobHandle, JobLaunch

__all__ = ["BackendError", "BackendState", "BackendStatus", "JobBackend", "JobHandle", "JobLaunch"]
