"""Every part of the extension, built through its constructor in the order they depend on.

Options (:mod:`.config`) come in as plain values; what jupyter_server supplies (its kernel
manager, its kernelspecs, its root directory, the URL kernels reach it at) comes in as objects
and callables. Nothing is set on a part after it is built: a part gets its collaborators, or
callables onto them, when it is made. Starting and stopping stay with the extension app.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import psutil
from traitlets import TraitError

from jupyter_dlinfra.backends import JobBackend
from jupyter_dlinfra.checkpoint import SIMULATED_CHECKPOINT_FILE_ENV
from jupyter_dlinfra.checkpoint.base import Checkpointer
from jupyter_dlinfra.core.books.idle import IdleBook
from jupyter_dlinfra.core.books.jobs import JobBook
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.server.calls import LedgerCalls
from jupyter_dlinfra.server.config import DLInfraOptions
from jupyter_dlinfra.server.identity import Directory
from jupyter_dlinfra.server.job_service import JobService, JobSettings
from jupyter_dlinfra.server.launches import KernelLaunches
from jupyter_dlinfra.server.parking import Parker, ParkSettings
from jupyter_dlinfra.server.pod_kernels import BIND_TIMEOUT_S, PodKernels
from jupyter_dlinfra.server.reclaim import (
    Coach,
    IdleView,
    PolicySource,
    Reclaimer,
    ReclaimSettings,
)
from jupyter_dlinfra.server.sampling import Sampler
from jupyter_dlinfra.server.service import GpuService
from jupyter_dlinfra.server.settings import ServiceSettings
from jupyter_dlinfra.telemetry import TelemetryProvider, select_provider
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetry

__all__ = ["KernelControl", "Parts", "ServerSide", "build"]


@dataclass(frozen=True, kw_only=True)
class ServerSide:
    """What the jupyter server lends the extension's parts."""

    kernel_manager: Any
    #: the kernelspec lookup, ``get_kernel_spec(name)``
    kernel_specs: Callable[[str], Any]
    root_dir: Path
    #: where kernels reach this server's API (known once the server listens)
    api_url: Callable[[], str]


@dataclass(frozen=True, kw_only=True)
class Parts:
    service: GpuService
    directory: Directory
    #: people's gateway tokens; None on a personal server
    tokens: TokenBook | None
    #: kernels as Kubernetes pods; None unless kernel_backend = 'kubernetes'
    pod_kernels: PodKernels | None


class KernelControl:
    """The reclaim loop's hands on this server's kernel manager."""

    def __init__(self, kernel_manager: Any) -> None:
        self._km = kernel_manager

    @property
    def kernel_manager(self) -> Any:
        return self._km

    def exists(self, kernel_id: str) -> bool:
        return kernel_id in self._km

    def executing(self, kernel_id: str) -> bool | None:
        try:
            state = self._km.get_kernel(kernel_id).execution_state
        except KeyError:
            return None
        # "starting" lasts until a client asks something: no cell has run yet
        return {"busy": True, "idle": False, "starting": False}.get(state)

    async def restart(self, kernel_id: str) -> None:
        await self._km.restart_kernel(kernel_id)

    async def shutdown(self, kernel_id: str) -> None:
        await self._km.shutdown_kernel(kernel_id)


class _PriorityClasses:
    """Our class -> its Kubernetes PriorityClass, as kubernetes_priority_classes says; created
    (mode 'ensure') once at start, for pods and Jobs alike."""

    def __init__(self, mode: str, ledger: Ledger) -> None:
        self._mode = mode
        self._ledger = ledger
        self._ensured: dict[str, str] | None = None

    def __call__(self, kube: dict[str, Any]) -> dict[str, str]:
        if self._mode == "off":
            return {}
        from jupyter_dlinfra.kube.api import KubeApi
        from jupyter_dlinfra.kube.priority import ensure_priority_classes, priority_class_name

        classes = self._ledger.scheduling_policy().classes
        if self._mode == "map":
            return {c.name: priority_class_name(c.name) for c in classes}
        if self._ensured is None:
            api = KubeApi(kubeconfig=kube.get("kubeconfig"), context=kube.get("context"))
            try:
                self._ensured = ensure_priority_classes(api.client(), classes)
            finally:
                api.close()
        return dict(self._ensured)


def build(options: DLInfraOptions, server: ServerSide, log: logging.Logger) -> Parts:
    """Every part, in dependency order. A wrong option raises TraitError before anything runs."""
    scheduling = options.configured_scheduling()
    reclaim_policy = options.configured_policy()
    clock = SystemClock()
    store = Store(options.db_url)
    if options.change_feed:
        # other processes' commits (PostgreSQL): what answers may be kept until one comes
        store.start_feed()
    directory = Directory(
        user_groups=options.user_groups,
        admin_users=options.admin_users,
        admin_groups=options.admin_groups,
        unix_groups=options.unix_groups,
    )
    ledger = Ledger(
        store,
        clock,
        policy=scheduling,
        groups_of=directory.groups_of,
        freeze_loaded_state=options.freeze_gc,
    )
    priority_classes = _PriorityClasses(options.kubernetes_priority_classes, ledger)
    # the job backends first: the PriorityClasses are ensured with their cluster's credentials
    backends = _load_backends(options, priority_classes) if options.job_backends else None
    pods = (
        _kernel_pods(options, priority_classes) if options.kernel_backend == "kubernetes" else None
    )
    cluster: ClusterTelemetry | None = None
    provider: TelemetryProvider
    if pods is not None:
        from jupyter_dlinfra.telemetry.cluster import ClusterProvider

        cluster = pods.cluster
        # the API's "provider" is the cluster's, not this node's (which runs no kernels)
        provider = ClusterProvider(cluster)
    else:
        provider = select_provider(
            simulated_gpus=options.simulated_gpus,
            simulated_models=options.simulated_gpu_models,
            node=options.node_name,
            clock=clock.now,
            simulated_load_file=options.simulated_load_file or None,
        )
    log.info(
        "dlinfra: ledger %s; GPUs from %s: %s",
        store.url.render_as_string(hide_password=True),
        provider.name,
        provider.reason,
    )
    settings = ServiceSettings(
        node=options.node_name,
        user=options.user_name,
        server_id=uuid.uuid4().hex,
        multi_user=options.gateway,
        telemetry_interval=options.telemetry_interval,
        reconcile_interval=options.reconcile_interval,
        watch_interval=options.watch_interval,
        hide_unallocated_gpus=options.hide_unallocated_gpus,
        events_debounce=options.events_debounce,
        events_fanout_rate=options.events_fanout_rate,
        events_keepalive=options.events_keepalive,
        job_interval=options.job_interval,
    )
    sampler = Sampler(
        ledger=ledger, provider=provider, cluster=cluster, node=settings.node, log=log
    )
    idle_book = IdleBook(store, clock)
    policies = PolicySource(idle_book, reclaim_policy, directory.groups_of)
    coach = Coach(options.coach_window)
    calls = LedgerCalls(
        ledger=ledger,
        sampler=sampler,
        idle_view=IdleView(idle_book, policies, coach),
        settings=settings,
        log=log,
    )
    launches = KernelLaunches(
        calls=calls, idle_book=idle_book, settings=settings, api_url=server.api_url, log=log
    )
    pod_kernels = (
        PodKernels(
            calls=calls,
            launches=launches,
            cluster=cluster,
            launcher=pods.launcher,
            server_id=settings.server_id,
            log=log,
            interval=options.pod_interval,
            admission=pods.admission,
            bind_timeout=pods.bind_timeout,
        )
        if pods is not None
        else None
    )
    control = KernelControl(server.kernel_manager)
    parker = Parker(
        calls=calls,
        checkpointer=_checkpointer(options, provider),
        kernels=control,
        samples=lambda: sampler.samples,
        settings=ParkSettings(
            host_memory_limit=_park_memory(options.park_host_memory),
            timeout_s=options.park_timeout,
        ),
        node=settings.node,
        log=log,
        tell=lambda kid, message: calls.call(idle_book.set_message, kid, message),
    )
    reclaimer = Reclaimer(
        calls=calls,
        parker=parker,
        sampler=sampler,
        book=idle_book,
        policies=policies,
        coach=coach,
        control=control,
        settings=ReclaimSettings(
            usage_bucket=options.usage_bucket,
            usage_retention=options.usage_retention,
            report_retention=options.report_retention,
        ),
        server_id=settings.server_id,
        log=log,
    )
    jobs = (
        JobService(
            ledger=ledger,
            book=JobBook(store, clock),
            server=settings,
            backends=backends,
            settings=JobSettings(
                root_dir=server.root_dir,
                jobs_dir=options.jobs_dir,
                default_backend=options.default_backend,
                max_notebook_bytes=options.max_notebook_bytes,
                max_parameter_bytes=options.max_parameter_bytes,
                max_sweep_jobs=options.max_sweep_jobs,
                hide_unallocated_gpus=options.hide_unallocated_gpus,
            ),
            log=log,
            kernel_specs=server.kernel_specs,
        )
        if backends is not None
        else None
    )
    km = server.kernel_manager

    def kernel_exists(kernel_id: str) -> bool:
        if kernel_id in km:
            return True
        # a previous gateway's kernel, being taken back: it is alive, the kernel manager is late
        return pod_kernels is not None and bool(pod_kernels.adopting(kernel_id))

    service = GpuService(
        calls=calls,
        sampler=sampler,
        launches=launches,
        idle_book=idle_book,
        reclaimer=reclaimer,
        jobs=jobs,
        settings=settings,
        local_kernel_exists=kernel_exists,
        log=log,
    )
    return Parts(
        service=service,
        directory=directory,
        tokens=TokenBook(store, clock) if options.gateway else None,
        pod_kernels=pod_kernels,
    )


def _checkpointer(options: DLInfraOptions, provider: TelemetryProvider) -> Checkpointer:
    """What parks kernels: the labelled stand-in on simulated GPUs (or when asked for), else the
    driver's CUDA checkpointing."""
    chosen = options.checkpointer
    if chosen == "simulated" or (chosen == "auto" and provider.simulated):
        from jupyter_dlinfra.checkpoint.simulated import SimulatedCheckpointer

        return SimulatedCheckpointer(
            control_file=os.environ.get(SIMULATED_CHECKPOINT_FILE_ENV) or None
        )
    from jupyter_dlinfra.checkpoint.cuda import CudaCheckpointer

    return CudaCheckpointer()


def _park_memory(gib: float) -> int:
    """The cap on parked kernels' host memory, in bytes (0 GiB: half of this machine's)."""
    if gib > 0:
        return int(gib * (1 << 30))
    return int(psutil.virtual_memory().total // 2)


@dataclass(frozen=True, kw_only=True)
class _Pods:
    launcher: Any
    cluster: ClusterTelemetry
    #: whether the ledger admits GPU pods (else kube-scheduler places them within quotas)
    admission: bool
    #: seconds an admitted GPU pod may stay unbound before its GPUs go back to the queue
    bind_timeout: float


def _kernel_pods(options: DLInfraOptions, priority_classes: _PriorityClasses) -> _Pods:
    from jupyter_dlinfra.kube.kernel_pods import PodLauncher
    from jupyter_dlinfra.telemetry.kubernetes import KubernetesTelemetry

    if not options.gateway:
        raise TraitError("DLInfra.kernel_backend = 'kubernetes' needs DLInfra.gateway = True")
    kube = dict(options.kernel_pods)
    kube.setdefault("priority_classes", priority_classes(kube))
    # the ledger admits GPU pods unless Kueue does (kernel_pods' kueue_queue)
    admission = bool(kube.pop("admission", not kube.get("kueue_queue")))
    if admission and kube.get("kueue_queue"):
        raise TraitError(
            "DLInfra.kernel_pods: admission and kueue_queue: admission is either the ledger's "
            "or Kueue's; unset one of them"
        )
    bind_timeout = kube.pop("bind_timeout_s", BIND_TIMEOUT_S)
    if (
        isinstance(bind_timeout, bool)
        or not isinstance(bind_timeout, (int, float))
        or not bind_timeout > 0
    ):
        raise TraitError(
            f"DLInfra.kernel_pods: bind_timeout_s must be seconds above 0, not {bind_timeout!r}"
        )
    try:
        launcher = PodLauncher(**kube)
        cluster = KubernetesTelemetry(**options.cluster_telemetry)
    except TypeError as err:
        raise TraitError(f"DLInfra.kernel_pods or DLInfra.cluster_telemetry: {err}") from None
    return _Pods(
        launcher=launcher, cluster=cluster, admission=admission, bind_timeout=float(bind_timeout)
    )


def _load_backends(
    options: DLInfraOptions, priority_classes: _PriorityClasses
) -> dict[str, JobBackend]:
    found = {ep.name: ep for ep in entry_points(group="jupyter_dlinfra.backends")}
    if options.default_backend not in options.job_backends:
        raise TraitError(
            f"DLInfra.default_backend {options.default_backend!r} is not in "
            f"DLInfra.job_backends {list(options.job_backends)}"
        )
    backends: dict[str, JobBackend] = {}
    for name in options.job_backends:
        if name not in found:
            raise TraitError(
                f"DLInfra.job_backends: no backend {name!r}; installed: " + ", ".join(sorted(found))
            )
        backend_options = dict(options.backend_options.get(name, {}))
        if name == "kubernetes" and options.kubernetes_priority_classes != "off":
            backend_options.setdefault("priority_classes", priority_classes(backend_options))
        if (
            name == "kubernetes"
            and options.kernel_backend == "kubernetes"
            and not backend_options.get("kueue_queue")
        ):
            # the ledger's GPUs are the cluster's (cluster_telemetry): it admits the Jobs
            backend_options.setdefault("admission", True)
        try:
            backends[name] = found[name].load()(**backend_options)
        except TypeError as err:
            raise TraitError(f"DLInfra.backend_options[{name!r}]: {err}") from None
    return backends
