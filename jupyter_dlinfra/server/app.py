"""The jupyter-server extension: its options, its start-up and its stop.

This is the one place where traitlets options meet jupyter_server: the options are the mixins of
:mod:`.config`, the parts are built by :mod:`.wiring`, and the routes come from
:mod:`.handlers.routes`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp

from jupyter_dlinfra.backends import BackendError
from jupyter_dlinfra.provisioning import set_port
from jupyter_dlinfra.provisioning.pod_provisioner import POD_PROVISIONER_NAME
from jupyter_dlinfra.provisioning.provisioner import PROVISIONER_NAME
from jupyter_dlinfra.server import restarts
from jupyter_dlinfra.server.config import DLInfraOptions, default_db_url
from jupyter_dlinfra.server.handlers.routes import routes
from jupyter_dlinfra.server.metrics import registry_for
from jupyter_dlinfra.server.pod_kernels import PodKernels
from jupyter_dlinfra.server.request_log import quiet_request_log
from jupyter_dlinfra.server.service import GpuService
from jupyter_dlinfra.server.wiring import ServerSide, build

__all__ = ["DLInfra", "default_db_url"]

#: a person's server waits this long for a kernel start on the gateway: the pod launcher's
#: default startup_timeout_s
GATEWAY_REQUEST_TIMEOUT_S = 300.0
_WILDCARD_HOSTS = {"", "0.0.0.0", "*", "::", "localhost"}


class DLInfra(ExtensionApp, DLInfraOptions):  # type: ignore[misc]
    name = "jupyter_dlinfra"
    load_other_extensions = True

    service: GpuService
    pod_kernels: PodKernels | None = None

    def _forwarding(self) -> bool:
        """This server's kernels run on a gateway (``--gateway-url``): so does the ledger."""
        return not self.gateway and bool(self._server.gateway_config.gateway_enabled)

    def _wait_for_pods(self) -> None:
        """GatewayClient gives up on a kernel start after 42 s by default, while the gateway
        waits up to 300 s for a kernel's first pod (an image pull): unless someone set the
        timeout, wait as long as the gateway does."""
        client = self._server.gateway_config
        if (
            "request_timeout" in self._server.config.get("GatewayClient", {})
            or os.environ.get(client.request_timeout_env)
            or client.request_timeout >= GATEWAY_REQUEST_TIMEOUT_S
        ):
            return
        client.request_timeout = GATEWAY_REQUEST_TIMEOUT_S
        client.init_connection_args()  # KERNEL_LAUNCH_TIMEOUT follows
        self.log.info(
            "dlinfra: GatewayClient.request_timeout is %g s, as long as the gateway waits for a "
            "kernel's pod (set it to change that)",
            GATEWAY_REQUEST_TIMEOUT_S,
        )

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        super()._link_jupyter_server_extension(serverapp)
        # before the server makes its kernel manager
        forwarding = not self.gateway and restarts.gateway_client(serverapp).gateway_enabled
        if not restarts.install(serverapp) and not forwarding:
            self.log.warning(
                "dlinfra: ServerApp.kernel_manager_class %s is not a %s: overlapping restarts "
                "of one kernel are not serialised and can run two processes of it",
                serverapp.kernel_manager_class,
                restarts.SerialRestartMappingKernelManager.__name__,
            )

    def initialize_settings(self) -> None:
        if self._forwarding():
            self.log.info(
                "dlinfra: kernels and the GPU ledger are on the gateway %s; /dlinfra is "
                "forwarded there",
                self._server.gateway_config.url,
            )
            self._wait_for_pods()
            return
        # a wrong option stops the extension before anything is opened or started
        parts = build(
            self,
            ServerSide(
                kernel_manager=self._server.kernel_manager,
                kernel_specs=self._server.kernel_spec_manager.get_kernel_spec,
                root_dir=Path(self._server.root_dir),
                api_url=self._kernel_api_url,
            ),
            self.log,
        )
        self.service = parts.service
        self.directory = parts.directory
        if parts.pod_kernels is not None:
            # before the start-up pass: a kernel being taken back counts as alive there, however
            # long ago it started (a kernel waiting for GPUs for an hour is still someone's)
            self._take_over_pods(parts.pod_kernels)
        self.service.prepare()
        self.settings["dlinfra_service"] = self.service
        # the web application's settings are updated from these once this returns
        self.settings["log_function"] = quiet_request_log(self.settings["log_function"])
        self.settings["dlinfra_directory"] = self.directory
        if parts.tokens is not None:
            self.settings["dlinfra_tokens"] = parts.tokens
        # per server, not prometheus_client's global registry: servers must not share series
        self.settings["dlinfra_metrics_registry"] = registry_for(self.service)
        set_port(self.service)
        restarts.check(self._server.kernel_manager, self.log)
        # jupyter_client imports IPython the first time it looks for kernelspecs, on the event
        # loop, while a job's conversion (nbconvert) may import it in a worker thread: the first
        # imports of one package in two threads at once can fail (KeyError: 'IPython', a kernel
        # start answered 500; found by the crash soak). So it is imported once, here
        _ = self._server.kernel_spec_manager.kernel_dirs
        if self.default_provisioner and self.kernel_backend == "local":
            self._make_provisioner_default()

    def _take_over_pods(self, pods: PodKernels) -> None:
        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        from jupyter_dlinfra.provisioning.port import set_pod_port

        self.pod_kernels = pods
        self.settings["dlinfra_pod_kernels"] = pods
        set_pod_port(pods)
        try:
            pods.take_over()
        except BackendError as err:  # the cluster may be down now: the gateway still starts
            self.log.error("dlinfra: could not look for a previous gateway's kernel pods: %s", err)
        factory = KernelProvisionerFactory.instance(parent=self._server.kernel_manager)
        factory.default_provisioner_name = POD_PROVISIONER_NAME

    def initialize_handlers(self) -> None:
        forwarding = self._forwarding()
        self.handlers.extend(routes(gateway=self.gateway, forwarding=forwarding))
        if forwarding:
            from jupyter_server.gateway.connections import GatewayWebSocketConnection

            from jupyter_dlinfra.server.forwarding.kernel_ws import OrderedGatewayConnection

            settings = self._server.web_app.settings
            if settings.get("kernel_websocket_connection_class") is GatewayWebSocketConnection:
                # only jupyter_server's default is replaced, never a class someone configured
                settings["kernel_websocket_connection_class"] = OrderedGatewayConnection

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        service = getattr(self, "service", None)
        if service is not None:  # None: the extension failed to load (its error is logged)
            await service.start()
            if self.pod_kernels is not None:
                self.pod_kernels.start(self._server.kernel_manager)

    async def stop_extension(self) -> None:
        # jupyter_server stops extensions before it shuts kernels down; shut ours down first,
        # while the ledger can still hear that their GPUs are free
        service = getattr(self, "service", None)
        if service is None:
            return
        km = self._server.kernel_manager
        pods = self.pod_kernels
        if pods is not None and self.keep_kernel_pods_on_stop:
            kept = pods.leave_running(km)
            if kept:
                self.log.info("dlinfra: kernels left running for the next gateway: %s", kept)
        if len(km.list_kernel_ids()):
            await km.shutdown_all()
        if pods is not None:
            from jupyter_dlinfra.provisioning.port import set_pod_port

            await pods.stop()
            set_pod_port(None)
        await service.stop()
        set_port(None)

    @property
    def _server(self) -> Any:
        if self.serverapp is None:
            raise RuntimeError("the dlinfra extension is not linked to a server yet")
        return self.serverapp

    def _make_provisioner_default(self) -> None:
        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        if "default_provisioner_name" in self._server.config.KernelProvisionerFactory:
            return
        if os.environ.get(KernelProvisionerFactory.default_provisioner_name_env):
            return
        factory = KernelProvisionerFactory.instance(parent=self._server.kernel_manager)
        factory.default_provisioner_name = PROVISIONER_NAME

    def _kernel_api_url(self) -> str:
        if self.api_url:
            return str(self.api_url)
        app = self._server
        scheme = "https" if app.certfile else "http"
        host = "127.0.0.1" if app.ip in _WILDCARD_HOSTS else app.ip
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{app.port}{app.base_url}"
