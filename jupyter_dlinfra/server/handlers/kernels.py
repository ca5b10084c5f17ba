"""jupyter_server's kernel API, with owners: each person sees and drives only their kernels.

These handlers replace jupyter_server's own for ``/api/kernels`` on the gateway (an extension's
routes are matched before the server's defaults). The owner of a kernel is the person whose token
started it, recorded in the ledger by the provisioner at launch; admins reach every kernel.
The request's ``env`` (``KERNEL_*`` variables, which jupyter_server's GatewayClient sends) is
passed to the kernel, except for what would change its identity.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, cast

from jupyter_client.jsonutil import json_default
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.services.kernels import handlers as base
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from jupyter_server.utils import url_escape, url_path_join
from tornado import web

from jupyter_dlinfra.core.errors import NotFound
from jupyter_dlinfra.provisioning.pod_provisioner import POD_PROVISIONER_NAME
from jupyter_dlinfra.provisioning.port import launching_for
from jupyter_dlinfra.server.errors import from_database_error
from jupyter_dlinfra.server.identity import Directory
from jupyter_dlinfra.server.parsing import MAX_NAME, BadJson, parse_json, shown
from jupyter_dlinfra.server.restarts import KernelStopped, restart_done, track_restart
from jupyter_dlinfra.server.service import GpuService

__all__ = ["KERNEL_ROUTES"]

#: variables a client may not set in a kernel's environment: identity and the ledger's token
_RESERVED_ENV = ("DLINFRA_", "JUPYTERHUB_", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
#: what a kernel on the gateway's own node inherits from the gateway's environment: what a
#: Python process needs to run, never the gateway's secrets (database URL, cluster credentials)
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
_INHERITED_PREFIXES = ("LC_", "VIRTUAL_ENV", "CONDA_", "PYTHON", "JUPYTER_PATH", "JUPYTER_DATA_DIR")
#: seconds a shutdown waits for a restart under way
_SETTLE_S = 120.0


class _Owned:
    """Owner checks shared by the kernel handlers (a mixin on jupyter_server's handlers)."""

    settings: dict[str, Any]
    current_user: Any

    @property
    def _service(self) -> GpuService:
        return cast(GpuService, self.settings["dlinfra_service"])

    def _caller(self) -> str:
        user = self.current_user
        if user is None or not getattr(user, "username", None):
            raise web.HTTPError(403, "who is calling is not known")
        return str(user.username)

    def _is_admin(self, name: str) -> bool:
        return cast(Directory, self.settings["dlinfra_directory"]).is_admin(name)

    async def _owners(self) -> dict[str, str]:
        records = await self._service.call(self._service.ledger.kernels)
        return {k.kernel_id: k.user for k in records}

    async def _only_pods(self, kernel_name: str) -> None:
        """On a Kubernetes gateway, refuse kernelspecs that would run a kernel beside the gateway
        (with its files and credentials) instead of in a pod."""
        if self.settings.get("dlinfra_pod_kernels") is None:
            return
        specs: Any = self.kernel_spec_manager  # type: ignore[attr-defined]
        try:
            spec = await ensure_async(specs.get_kernel_spec(kernel_name))
        except Exception:  # jupyter_server answers an unknown name itself
            return
        named = (spec.metadata or {}).get("kernel_provisioner", {}).get("provisioner_name")
        if named not in (None, POD_PROVISIONER_NAME):
            raise web.HTTPError(
                400,
                f"kernelspec {kernel_name!r} runs its kernels with {named!r}, on the gateway "
                "itself; this gateway runs kernels only in Kubernetes pods: pick another kernel "
                "(ask for GPUs with %gpu N once it runs)",
            )

    async def check_owner(self, kernel_id: str) -> None:
        name = self._caller()
        if self._is_admin(name):
            km: Any = self.kernel_manager  # type: ignore[attr-defined]
            if kernel_id not in km:
                # an admin's action on no kernel is a 404, as anyone's (a restart answered 500)
                raise web.HTTPError(404, f"no kernel {shown(kernel_id)}")
            return
        try:
            record = await self._service.call(self._service.ledger.kernel, kernel_id)
        except NotFound:
            raise web.HTTPError(404, f"no kernel {shown(kernel_id)}") from None
        if record.user != name:
            raise web.HTTPError(403, f"kernel {kernel_id} belongs to {record.user}")


class MainKernelHandler(_Owned, base.MainKernelHandler):  # type: ignore[misc]
    @web.authenticated  # type: ignore[untyped-decorator]
    @authorized  # type: ignore[untyped-decorator]
    async def get(self) -> None:
        name = self._caller()
        km: Any = self.kernel_manager
        kernels = await ensure_async(km.list_kernels())
        if not self._is_admin(name):
            owners = await self._owners()
            kernels = [k for k in kernels if owners.get(k["id"]) == name]
        self.finish(json.dumps(kernels, default=json_default))

    @web.authenticated  # type: ignore[untyped-decorator]
    @authorized  # type: ignore[untyped-decorator]
    async def post(self) -> None:
        name = self._caller()
        km: Any = self.kernel_manager
        model = _json_object(self.request.body)
        for key in ("name", "path"):
            value = model.get(key)
            if value is not None and (
                not isinstance(value, str) or len(value) > (4096 if key == "path" else MAX_NAME)
            ):
                raise web.HTTPError(400, f"{key} must be a string (a kernelspec's name, a path)")
        kernel_name = model.get("name") or km.default_kernel_name
        specs: Any = self.kernel_spec_manager  # type: ignore[attr-defined]
        try:
            await ensure_async(specs.get_kernel_spec(kernel_name))
        except NoSuchKernel:  # else jupyter_client raises it from start_kernel: a 500
            raise web.HTTPError(400, f"no kernelspec {shown(kernel_name)}") from None
        if model.get("kernel_id"):
            # a client-chosen id could name someone else's kernel record in the ledger
            raise web.HTTPError(400, "the gateway chooses kernel ids: do not send kernel_id")
        env = _client_env(model.get("env"))
        await self._only_pods(kernel_name)
        with launching_for(name):
            try:
                kernel_id: str = await ensure_async(
                    km.start_kernel(kernel_name=kernel_name, path=model.get("path"), env=env)
                )
            except Exception as err:
                # a kernel is registered in the ledger as it launches: none without its database
                unavailable = from_database_error(err)
                if unavailable is None:
                    raise
                raise unavailable from None
        body = await ensure_async(km.kernel_model(kernel_id))
        self.set_header(
            "Location", url_path_join(self.base_url, "api", "kernels", url_escape(kernel_id))
        )
        self.set_status(201)
        self.finish(json.dumps(body, default=json_default))


class KernelHandler(_Owned, base.KernelHandler):  # type: ignore[misc]
    @web.authenticated  # type: ignore[untyped-decorator]
    @authorized  # type: ignore[untyped-decorator]
    async def get(self, kernel_id: str) -> None:
        await self.check_owner(kernel_id)
        km: Any = self.kernel_manager
        model = await ensure_async(km.kernel_model(kernel_id))
        self.finish(json.dumps(model, default=json_default))

    @web.authenticated  # type: ignore[untyped-decorator]
    @authorized  # type: ignore[untyped-decorator]
    async def delete(self, kernel_id: str) -> None:
        await self.check_owner(kernel_id)
        km: Any = self.kernel_manager
        await _settled(km, kernel_id)
        await ensure_async(km.shutdown_kernel(kernel_id))
        self.set_status(204)
        self.finish()


class KernelActionHandler(_Owned, base.KernelActionHandler):  # type: ignore[misc]
    @web.authenticated  # type: ignore[untyped-decorator]
    @authorized  # type: ignore[untyped-decorator]
    async def post(self, kernel_id: str, action: str) -> None:
        await self.check_owner(kernel_id)
        km: Any = self.kernel_manager
        if action == "interrupt":
            await ensure_async(km.interrupt_kernel(kernel_id))
            self.set_status(204)
        else:
            try:
                await track_restart(kernel_id, km.restart_kernel(kernel_id))
            except KernelStopped:
                raise web.HTTPError(
                    404, f"kernel {kernel_id} was shut down before its restart began"
                ) from None
            except Exception as err:
                raise web.HTTPError(500, f"could not restart kernel {kernel_id}: {err}") from err
            model = await ensure_async(km.kernel_model(kernel_id))
            self.write(json.dumps(model, default=json_default))
        self.finish()


class KernelChannelsHandler(_Owned, KernelWebsocketHandler):  # type: ignore[misc]
    async def pre_get(self) -> None:
        await self.check_owner(self.kernel_id)
        await super().pre_get()  # type: ignore[no-untyped-call]


async def _settled(km: Any, kernel_id: str) -> None:
    """Wait (a while) for a kernel's start or restart under way: jupyter_client cannot shut
    down a kernel whose restart has not finished, and a pod kernel's restart (``%gpu``, a move
    into its GPU pod) takes seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETTLE_S
    await restart_done(kernel_id, _SETTLE_S)
    while (left := deadline - loop.time()) > 0:
        try:
            ready = km.get_kernel(kernel_id).ready
        except (KeyError, AttributeError):
            return  # jupyter_server answers an unknown kernel itself
        if not isinstance(ready, asyncio.Future) or ready.done():
            return
        await asyncio.wait({ready}, timeout=left)


def _json_object(raw: bytes) -> dict[str, Any]:
    """The request's body (the server's bounds: size, depth, numbers); an empty one is {}."""
    try:
        model = parse_json(raw.strip() or b"{}")
    except BadJson as err:
        raise web.HTTPError(400, str(err)) from None
    if not isinstance(model, dict):
        raise web.HTTPError(400, "the request body must be a JSON object")
    return model


def _client_env(env: Any) -> dict[str, str]:
    """The kernel's environment: what it needs of the gateway's, plus what the client adds."""
    if env is None:
        env = {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str)
        and isinstance(v, str)
        and k
        and "=" not in k
        and "\x00" not in k + v  # a process's environment cannot hold them
        for k, v in env.items()
    ):
        raise web.HTTPError(
            400, "env must be an object of strings (names without '=', no NUL characters)"
        )
    merged = {
        k: v
        for k, v in os.environ.items()
        if k in _INHERITED_ENV or k.startswith(_INHERITED_PREFIXES)
    }
    for key, value in env.items():
        if key.startswith(_RESERVED_ENV):
            continue
        merged[key] = value
    return merged


KERNEL_ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/api/kernels", MainKernelHandler),
    (rf"/api/kernels/{base._kernel_id_regex}", KernelHandler),
    (rf"/api/kernels/{base._kernel_id_regex}/{base._kernel_action_regex}", KernelActionHandler),
    (rf"/api/kernels/{base._kernel_id_regex}/channels", KernelChannelsHandler),
]
