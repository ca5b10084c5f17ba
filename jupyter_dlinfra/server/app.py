"""The jupyter-server extension: configuration, start-up and the wiring of the pieces.

This is the one place where traitlets options become the plain settings that ``core`` and the
service take.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, List, TraitError, Unicode, default, validate

from ..core import Ledger, Store, SystemClock
from ..provisioning import set_port
from ..telemetry import select_provider, simulated_gpus_from_env, simulated_models_from_env
from .handlers import ROUTES
from .metrics import registry_for
from .service import GpuService, ServiceSettings

__all__ = ["DLInfra"]

PROVISIONER_NAME = "dlinfra-provisioner"
_WILDCARD_HOSTS = {"", "0.0.0.0", "*", "::", "localhost"}


class DLInfra(ExtensionApp):  # type: ignore[misc]
    name = "jupyter_dlinfra"
    load_other_extensions = True

    db_url = Unicode(
        "",
        config=True,
        help="SQLAlchemy URL of the GPU ledger, e.g. postgresql+psycopg://host/dlinfra. Empty: "
        "SQLite (WAL mode) at <jupyter data dir>/dlinfra/ledger.sqlite, shared by every server "
        "of this user on this node. Servers that should share one ledger must use the same URL. "
        "Environment: DLINFRA_DB_URL.",
    )
    simulated_gpus = Int(
        config=True,
        help="Number of simulated GPUs for machines without any (demo, tests). 0 disables "
        "simulation and reads real GPUs through NVML. Simulated GPUs are labelled simulated in "
        "every API answer. Environment: DLINFRA_SIMULATED_GPUS.",
    )
    simulated_gpu_models = List(
        Unicode(),
        config=True,
        help="Model names given to simulated GPUs in turn (GPU i gets models[i % len]); empty: "
        "one default model. Only used when simulated_gpus > 0. "
        "Environment: DLINFRA_SIMULATED_GPU_MODELS (comma-separated).",
    )
    node_name = Unicode(
        config=True,
        help="Name of this node in the ledger. Default: the host name. Kernels get GPUs of their "
        "own node only.",
    )
    user_name = Unicode(
        config=True,
        help="Name recorded in the ledger for the kernels and requests of this server. Default: "
        "$JUPYTERHUB_USER, else the login name of the server process.",
    )
    api_url = Unicode(
        "",
        config=True,
        help="URL at which kernels reach this server's /dlinfra/api. Empty: derived from the "
        "server's ip, port and base_url (wildcard addresses become 127.0.0.1).",
    )
    telemetry_interval = Float(
        2.0,
        config=True,
        help="Seconds between two GPU telemetry samples (one sample serves every client). "
        "0 disables periodic sampling.",
    )
    reconcile_interval = Float(
        30.0,
        config=True,
        help="Seconds between two checks that the ledger's kernels on this node still run; GPUs "
        "of vanished kernels are released. 0 disables the periodic check (it still runs at "
        "start-up).",
    )
    watch_interval = Float(
        0.2,
        config=True,
        help="Seconds between two looks at the ledger for changes made by other server "
        "processes (waiting requests notice grants this fast). 0 disables it.",
    )
    events_debounce = Float(
        0.05,
        config=True,
        help="Seconds within which ledger changes and telemetry samples share one snapshot of "
        "the event stream (GET /dlinfra/api/events); the first change after a quiet spell goes "
        "out at once.",
    )
    events_keepalive = Float(
        15.0,
        config=True,
        help="Seconds after which an idle event stream gets a keepalive comment, so that proxies "
        "do not close it.",
    )
    hide_unallocated_gpus = Bool(
        True,
        config=True,
        help="Start kernels with CUDA_VISIBLE_DEVICES='' until the ledger grants them GPUs, so "
        "that no kernel uses a GPU it does not hold. False leaves the variable untouched for "
        "kernels without a grant.",
    )
    default_provisioner = Bool(
        True,
        config=True,
        help="Make the dlinfra provisioner the default for kernelspecs that name none (the stock "
        "python3 kernel), unless KernelProvisionerFactory.default_provisioner_name is set.",
    )

    @default("simulated_gpus")
    def _default_simulated_gpus(self) -> int:
        return simulated_gpus_from_env(os.environ) or 0

    @default("simulated_gpu_models")
    def _default_simulated_models(self) -> list[str]:
        return simulated_models_from_env(os.environ) or []

    @default("node_name")
    def _default_node_name(self) -> str:
        return socket.gethostname()

    @default("user_name")
    def _default_user_name(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("db_url")
    def _default_db_url(self) -> str:
        if os.environ.get("DLINFRA_DB_URL"):
            return os.environ["DLINFRA_DB_URL"]
        path = Path(jupyter_data_dir()) / "dlinfra" / "ledger.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"

    @validate("events_debounce", "events_keepalive")
    def _check_events_timing(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if value < 0 or (proposal["trait"].name == "events_keepalive" and value == 0):
            raise TraitError(f"DLInfra.{proposal['trait'].name} must be positive, not {value}")
        return value

    @validate("simulated_gpus")
    def _check_simulated_gpus(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise TraitError(f"DLInfra.simulated_gpus must be 0 or more, not {value}")
        return value

    def initialize_settings(self) -> None:
        clock = SystemClock()
        store = Store(self.db_url)
        ledger = Ledger(store, clock)
        provider = select_provider(
            simulated_gpus=self.simulated_gpus,
            simulated_models=self.simulated_gpu_models,
            node=self.node_name,
            clock=clock.now,
        )
        self.log.info(
            "dlinfra: ledger %s; GPUs from %s: %s",
            store.url.render_as_string(hide_password=True),
            provider.name,
            provider.reason,
        )
        self.service = GpuService(
            ledger=ledger,
            provider=provider,
            settings=ServiceSettings(
                node=self.node_name,
                user=self.user_name,
                server_id=uuid.uuid4().hex,
                telemetry_interval=self.telemetry_interval,
                reconcile_interval=self.reconcile_interval,
                watch_interval=self.watch_interval,
                hide_unallocated_gpus=self.hide_unallocated_gpus,
                events_debounce=self.events_debounce,
                events_keepalive=self.events_keepalive,
            ),
            api_url=self._kernel_api_url,
            local_kernel_exists=lambda kernel_id: kernel_id in self._server.kernel_manager,
            log=self.log,
        )
        self.service.prepare()
        self.settings["dlinfra_service"] = self.service
        # per server, not prometheus_client's global registry: servers must not share series
        self.settings["dlinfra_metrics_registry"] = registry_for(self.service)
        set_port(self.service)
        if self.default_provisioner:
            self._make_provisioner_default()

    def initialize_handlers(self) -> None:
        self.handlers.extend((pattern, handler) for pattern, handler, _ in ROUTES)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.service.start()

    async def stop_extension(self) -> None:
        # jupyter_server stops extensions before it shuts kernels down; shut ours down first,
        # while the ledger can still hear that their GPUs are free
        km = self._server.kernel_manager
        if len(km.list_kernel_ids()):
            await km.shutdown_all()
        await self.service.stop()
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
