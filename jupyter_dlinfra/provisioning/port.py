"""What the provisioner needs from the GPU ledger, and where it finds it.

The server extension registers its implementation with :func:`set_port` when it loads; the
provisioner only sees this protocol, so it never imports the server package. A provisioner that
runs in a process without the extension (``jupyter console`` with a GPU kernelspec, say) finds no
port and launches the kernel like jupyter_client's LocalProvisioner would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["KernelLedgerPort", "LaunchPlan", "get_port", "set_port"]


@dataclass(frozen=True, kw_only=True)
class LaunchPlan:
    #: variables to add to the kernel's environment (identity, API URL, token, CUDA devices)
    env: dict[str, str] = field(default_factory=dict)
    #: a line for the server log, saying what the launch got
    summary: str = ""


class KernelLedgerPort(Protocol):
    async def kernel_launching(
        self, *, kernel_id: str, kernel_name: str, path: str | None, gpus: int, model: str | None
    ) -> LaunchPlan:
        """Called from ``pre_launch``: register the kernel, issue its token, ask for GPUs."""
        ...

    async def kernel_started(self, *, kernel_id: str, pid: int) -> None:
        """Called once the kernel process exists, so that liveness can be checked by pid."""
        ...

    async def kernel_stopped(self, *, kernel_id: str, restart: bool, reason: str) -> None:
        """Called when the kernel process is gone: release its GPUs (unless carried over)."""
        ...


_port: KernelLedgerPort | None = None


def set_port(port: KernelLedgerPort | None) -> None:
    global _port
    _port = port


def get_port() -> KernelLedgerPort | None:
    return _port
