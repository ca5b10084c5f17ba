"""A LocalProvisioner that gives each kernel an identity in the GPU ledger.

jupyter_client calls, per launch: ``pre_launch`` -> ``launch_kernel`` -> ``post_launch``; the
restarter calls ``poll`` every few seconds; shutdown, restart and death end in ``cleanup``. We hook
each of them so that a kernel's GPUs are released however it ends, and applied at launch when the
kernelspec asks for GPUs or a restart carries them over.
"""

from __future__ import annotations

import logging
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Int, Unicode

from jupyter_dlinfra.provisioning.port import get_port, launching_owner

__all__ = ["PROVISIONER_NAME", "DLInfraProvisioner"]

#: the name kernelspecs and jupyter_client know this provisioner by (its entry point)
PROVISIONER_NAME = "dlinfra-provisioner"

log = logging.getLogger(__name__)

_IPYKERNEL_MARKERS = ("ipykernel_launcher", "ipykernel")


def _is_ipykernel(cmd: list[str]) -> bool:
    return any(marker in part for part in cmd for marker in _IPYKERNEL_MARKERS)


class DLInfraProvisioner(LocalProvisioner):  # type: ignore[misc]
    gpus = Int(
        0,
        config=True,
        help="GPUs to request for the kernel at launch (0: none; the kernel can still use %gpu). "
        "Set per kernelspec in metadata.kernel_provisioner.config.gpus.",
    )
    gpu_model = Unicode(
        "",
        config=True,
        help="Restrict launch-time GPUs to this model (a name such as 'A100'; empty: any model).",
    )

    _death_reported = False
    _stopping = False
    _warned_no_port = False

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        port = get_port()
        if port is None:
            if not DLInfraProvisioner._warned_no_port:
                log.warning(
                    "jupyter_dlinfra server extension is not loaded in this process; kernels "
                    "start without GPU ledger access"
                )
                DLInfraProvisioner._warned_no_port = True
            return kwargs
        env: dict[str, str] = kwargs["env"]
        plan = await port.kernel_launching(
            kernel_id=self.kernel_id,
            kernel_name=getattr(self.parent, "kernel_name", "") or "",
            path=env.get("JPY_SESSION_NAME") or None,
            gpus=self.gpus,
            model=self.gpu_model or None,
            owner=launching_owner(),
        )
        env.update(plan.env)
        cmd: list[str] = list(kwargs["cmd"])
        if _is_ipykernel(cmd):
            # makes %gpu available without %load_ext
            cmd.append("--ext=jupyter_dlinfra")
        kwargs["cmd"] = cmd
        self._death_reported = False
        self._stopping = False
        if plan.summary:
            self.log.info("kernel %s: %s", self.kernel_id, plan.summary)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info = await super().launch_kernel(cmd, **kwargs)
        port = get_port()
        if port is not None and self.pid is not None:
            await port.kernel_started(kernel_id=self.kernel_id, pid=self.pid)
        return info

    async def poll(self) -> int | None:
        status: int | None = await super().poll()
        if status is not None and self.process is not None and not self._death_reported:
            if self._stopping:
                return status  # an exit we asked for: cleanup() says why
            # the restarter polls every few seconds: free the GPUs now, not at the next cleanup
            self._death_reported = True
            port = get_port()
            if port is not None:
                await port.kernel_stopped(
                    kernel_id=self.kernel_id,
                    restart=True,
                    reason=f"kernel died (exit status {status})",
                    pid=self.pid,
                )
        return status

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._stopping = True
        await super().shutdown_requested(restart=restart)

    async def kill(self, restart: bool = False) -> None:
        self._stopping = True
        await super().kill(restart=restart)

    async def terminate(self, restart: bool = False) -> None:
        self._stopping = True
        await super().terminate(restart=restart)

    async def cleanup(self, restart: bool = False) -> None:
        pid = self.pid
        await super().cleanup(restart=restart)
        port = get_port()
        if port is not None:
            await port.kernel_stopped(
                kernel_id=self.kernel_id,
                restart=restart,
                reason="kernel restarted" if restart else "kernel shut down",
                pid=pid,
            )
