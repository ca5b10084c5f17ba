"""What the provisioner needs from the GPU ledger, and where it finds it.

The server extension registers its implementation with :func:`set_port` when it loads; the
provisioner only sees this protocol, so it never imports the server package. A provisioner that
runs in a process without the extension (``jupyter console`` with a GPU kernelspec, say) finds no
port and launches the kernel like jupyter_client's LocalProvisioner would.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "KernelLedgerPort",
    "LaunchPlan",
    "PodPort",
    "get_pod_port",
    "get_port",
    "launching_for",
    "launching_owner",
    "set_pod_port",
    "set_port",
]

# who a kernel being started belongs to, on a server shared by several people (the gateway);
# a context variable, not an environment variable, so that no client can set it
_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("dlinfra_owner", default=None)


@contextlib.contextmanager
def launching_for(owner: str) -> Iterator[None]:
    """Kernels started inside this block belong to ``owner`` (the gateway's kernel handler)."""
    reset = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(reset)


def launching_owner() -> str | None:
    """The owner set by :func:`launching_for` around this launch; None on a personal server."""
    return _owner.get()


@dataclass(frozen=True, kw_only=True)
class LaunchPlan:
    #: variables to add to the kernel's environment (identity, API URL, token, CUDA devices)
    env: dict[str, str] = field(default_factory=dict)
    #: a line for the server log, saying what the launch got
    summary: str = ""


class KernelLedgerPort(Protocol):
    async def kernel_launching(
        self,
        *,
        kernel_id: str,
        kernel_name: str,
        path: str | None,
        gpus: int,
        model: str | None,
        owner: str | None = None,
    ) -> LaunchPlan:
        """Called from ``pre_launch``: register the kernel, issue its token, ask for GPUs.

        ``owner``: the person the kernel belongs to on a shared gateway (None: the server's user).
        """
        ...

    async def kernel_started(self, *, kernel_id: str, pid: int) -> None:
        """Called once the kernel process exists, so that liveness can be checked by pid."""
        ...

    async def kernel_stopped(
        self, *, kernel_id: str, restart: bool, reason: str, pid: int | None = None
    ) -> None:
        """Called when the kernel process is gone: release its GPUs (unless carried over).

        ``pid``: the process that ended. GPUs stay with the kernel while another of its
        processes, the one the ledger knows as the kernel's, still runs.
        """
        ...


_port: KernelLedgerPort | None = None


def set_port(port: KernelLedgerPort | None) -> None:
    global _port
    _port = port


def get_port() -> KernelLedgerPort | None:
    return _port


class PodPort(Protocol):
    """What the pod provisioner needs from the gateway when kernels run as Kubernetes pods."""

    async def pod_launching(
        self,
        *,
        kernel_id: str,
        kernel_name: str,
        path: str | None,
        owner: str | None,
        client_env: Mapping[str, str],
    ) -> LaunchPlan:
        """Called from ``pre_launch``: register the kernel (or keep its identity on restart).
        ``client_env`` (the ``KERNEL_*`` variables the client sent) goes into its pods."""
        ...

    async def start_pod(self, *, kernel_id: str, env: dict[str, str]) -> dict[str, object]:
        """Called from ``launch_kernel``: adopt the pod readied for the kernel's GPUs, or start
        one without GPUs; wait until it runs; return the connection info to reach it."""
        ...

    def pod_exit(self, kernel_id: str) -> int | None:
        """The exit status of the kernel's pod if it ended (or vanished), else None."""
        ...

    async def stop_pod(self, *, kernel_id: str, restart: bool, reason: str) -> None:
        """Delete the kernel's running pod; without ``restart``, end its GPU requests too."""
        ...


_pod_port: PodPort | None = None


def set_pod_port(port: PodPort | None) -> None:
    global _pod_port
    _pod_port = port


def get_pod_port() -> PodPort | None:
    return _pod_port
