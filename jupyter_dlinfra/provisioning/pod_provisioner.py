"""A kernel provisioner that runs each kernel in a Kubernetes pod, through the team gateway.

jupyter_client calls ``pre_launch`` -> ``launch_kernel`` -> ``post_launch`` per launch, ``poll``
every few seconds, and ``terminate``/``kill`` then ``cleanup`` at shutdown or restart. All the
work with the cluster happens in the gateway (:class:`~jupyter_dlinfra.server.pod_kernels.
PodKernels`, reached through :func:`~.port.get_pod_port`): this class only maps the calls.

A kernel starts in a pod without GPUs, which any node can take at once. ``%gpu N`` readies a
second pod with N GPUs while the kernel keeps working; once the cluster's scheduler has bound it
and it runs, the kernel is restarted into it (its variables are lost, and ``%gpu`` says so).
Interrupts go as messages on the control channel (signals cannot cross into a pod).
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Mapping
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from jupyter_dlinfra.provisioning.port import get_pod_port, launching_owner

__all__ = ["POD_PROVISIONER_NAME", "PodProvisioner", "client_env"]

#: the name jupyter_client knows this provisioner by (its entry point)
POD_PROVISIONER_NAME = "dlinfra-pod-provisioner"

_POLL_S = 0.5
#: the variables of the client's that go into the kernel's pods
_CLIENT_ENV = re.compile(r"KERNEL_[A-Za-z0-9_]+")


def client_env(env: Mapping[str, str]) -> dict[str, str]:
    """The ``KERNEL_*`` variables of ``env``: what a kernel's client sent, for its pods."""
    return {k: v for k, v in env.items() if _CLIENT_ENV.fullmatch(k)}


class PodProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    _launched = False

    def _port(self) -> Any:
        port = get_pod_port()
        if port is None:
            raise RuntimeError(
                "kernels in Kubernetes pods need the team gateway with "
                "DLInfra.kernel_backend = 'kubernetes' (jupyter dlinfra gateway)"
            )
        return port

    @property
    def has_process(self) -> bool:
        return self._launched

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        env: dict[str, str] = kwargs["env"]
        plan = await self._port().pod_launching(
            kernel_id=self.kernel_id,
            kernel_name=getattr(self.parent, "kernel_name", "") or "",
            path=env.get("JPY_SESSION_NAME") or None,
            owner=launching_owner(),
            # what Enterprise Gateway's clients pass too (KERNEL_USERNAME...); the gateway's own
            # environment (PATH, HOME) is not the pod image's
            client_env=client_env(env),
        )
        kwargs["pod_env"] = dict(plan.env)
        # jupyter_client expects a command; the pod's own command starts the kernel
        kwargs["cmd"] = ["python", "-m", "jupyter_dlinfra.kernel_pod"]
        if self.parent is not None and hasattr(self.parent, "kernel_spec"):
            # a signal cannot reach a process in another pod: interrupt by message
            self.parent.kernel_spec.interrupt_mode = "message"
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info: KernelConnectionInfo = await self._port().start_pod(
            kernel_id=self.kernel_id, env=kwargs["pod_env"]
        )
        self._launched = True
        self.connection_info = info
        return info

    async def poll(self) -> int | None:
        if not self._launched:
            return 0
        status: int | None = self._port().pod_exit(self.kernel_id)
        return status

    async def wait(self) -> int | None:
        while True:
            status = await self.poll()
            if status is not None:
                return status
            await asyncio.sleep(_POLL_S)

    async def send_signal(self, signum: int) -> None:
        if signum == signal.SIGINT:
            return None  # interrupt_mode is "message": jupyter_client sends it on control
        self.log.info("kernel %s: signal %s is not delivered into its pod", self.kernel_id, signum)
        return None

    async def kill(self, restart: bool = False) -> None:
        await self._stop(restart)

    async def terminate(self, restart: bool = False) -> None:
        await self._stop(restart)

    async def _stop(self, restart: bool) -> None:
        if self._launched:
            await self._port().stop_pod(
                kernel_id=self.kernel_id,
                restart=restart,
                reason="kernel restarted" if restart else "kernel shut down",
            )
            self._launched = False

    async def cleanup(self, restart: bool = False) -> None:
        # a kernel that exited on its own (shutdown request, crash) leaves its pod behind
        port = get_pod_port()
        if port is not None:
            await port.stop_pod(
                kernel_id=self.kernel_id,
                restart=restart,
                reason="kernel restarted" if restart else "kernel shut down",
            )
        self._launched = False

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["launched"] = self._launched
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._launched = bool(provisioner_info.get("launched"))
