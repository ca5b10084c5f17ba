"""The jupyter-server extension: configuration, start-up and the wiring of the pieces.

This is the one place where traitlets options become the plain settings that ``core`` and the
service take.
"""

from __future__ import annotations

import ast
import getpass
import os
import socket
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, default, validate

from jupyter_dlinfra.backends import BackendError, JobBackend
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.idle import PolicyError, ReclaimPolicy
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.provisioning import set_port
from jupyter_dlinfra.server import restarts
from jupyter_dlinfra.server.handlers.gpus import ROUTES
from jupyter_dlinfra.server.identity import Directory
from jupyter_dlinfra.server.job_service import JobService, JobSettings
from jupyter_dlinfra.server.metrics import registry_for
from jupyter_dlinfra.server.reclaim import PolicySource, Reclaimer, ReclaimSettings
from jupyter_dlinfra.server.service import GpuService, ServiceSettings
from jupyter_dlinfra.telemetry import (
    SIMULATED_LOAD_FILE_ENV,
    select_provider,
    simulated_gpus_from_env,
    simulated_models_from_env,
)

__all__ = ["DLInfra"]

PROVISIONER_NAME = "dlinfra-provisioner"
POD_PROVISIONER_NAME = "dlinfra-pod-provisioner"
#: a person's server waits this long for a kernel start on the gateway: the pod launcher's
#: default startup_timeout_s
GATEWAY_REQUEST_TIMEOUT_S = 300.0
_WILDCARD_HOSTS = {"", "0.0.0.0", "*", "::", "localhost"}


def default_db_url() -> str:
    """``DLINFRA_DB_URL``, else a SQLite file in the Jupyter data dir (made if missing)."""
    if os.environ.get("DLINFRA_DB_URL"):
        return os.environ["DLINFRA_DB_URL"]
    path = Path(jupyter_data_dir()) / "dlinfra" / "ledger.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class DLInfra(ExtensionApp):  # type: ignore[misc]
    name = "jupyter_dlinfra"
    load_other_extensions = True

    gateway = Bool(
        False,
        config=True,
        help="Run as the team gateway (`jupyter dlinfra gateway` sets it): callers are told "
        "apart by their tokens, each acts on their own kernels and jobs, admins on all. Off: a "
        "personal server, whose every caller is user_name. A server started with "
        "--gateway-url forwards /dlinfra to its gateway whatever this says.",
    )
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
    simulated_load_file = Unicode(
        config=True,
        help="JSON file that pins simulated GPUs' readings, re-read whenever it changes: "
        '{"0": {"utilization_percent": 0, "memory_used_bytes": 0, "processes": {"PID": '
        "BYTES}}} (keys: GPU index or UUID). Lets a demo or test make GPUs idle or busy. Empty: "
        "no file. Only used with simulated_gpus > 0. Environment: DLINFRA_SIMULATED_LOAD_FILE.",
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

    # -- kernels as Kubernetes pods (team gateway; server/pod_kernels.py) ---------------------

    kernel_backend = Enum(
        ["local", "kubernetes"],
        "local",
        config=True,
        help="Where the gateway runs kernels: 'local' (processes on the gateway's node, GPUs "
        "from its ledger) or 'kubernetes' (one pod per kernel, GPUs placed by the cluster's "
        "scheduler; needs gateway = True). With 'kubernetes', the GPU inventory comes from the "
        "cluster's nodes (see cluster_telemetry) and the pod provisioner becomes the default.",
    )
    kernel_pods = Dict(
        config=True,
        help="Options of kernel pods (kube/kernel_pods.py PodLauncher): namespace, "
        "image, python, service_account, node_selector, tolerations, priority_classes (our "
        "class -> PriorityClass), kueue_queue, labels, resources, kubeconfig, context, "
        "startup_timeout_s. Example: {'namespace': 'dlinfra', 'image': 'ghcr.io/me/dl:1'}.",
    )
    cluster_telemetry = Dict(
        config=True,
        help="Options of the cluster's GPU inventory and utilisation (telemetry/kubernetes.py): "
        "prometheus_url (a Prometheus that scrapes NVIDIA's dcgm-exporter; empty: inventory "
        "only, no live utilisation), prometheus_filter, node_selector, kubeconfig, context.",
    )
    kubernetes_priority_classes = Enum(
        ["off", "map", "ensure"],
        "off",
        config=True,
        help="Our priority classes as Kubernetes PriorityClasses named dlinfra-<class>, on kernel "
        "pods and Jobs. 'map': use them (an admin created them, e.g. from deploy/kubernetes); "
        "'ensure': the gateway creates or updates them at start from the scheduling policy "
        "(needs the right to manage priorityclasses); 'off': pods get the cluster's default "
        "priority. A priority_classes entry in kernel_pods or backend_options wins.",
    )
    pod_interval = Float(
        1.0,
        config=True,
        help="Seconds between two readings of every kernel pod (one list call each time).",
    )
    keep_kernel_pods_on_stop = Bool(
        False,
        config=True,
        help="With kernel_backend = 'kubernetes': a clean stop of the gateway (SIGTERM, so also "
        "an update of its Deployment) leaves the kernel pods running, with their GPUs, for the "
        "next gateway to take back at start, as after a crash. Only when a gateway always comes "
        "back (a Deployment): pods left by a gateway that never returns hold their GPUs.",
    )

    # -- idle reclaim (see core/idle.py); the policy API can replace these at run time ----------

    idle_util_percent = Float(
        5.0,
        config=True,
        help="A GPU under this utilisation (%) is idle; a kernel is idle when all its GPUs are. "
        "Only GPU utilisation counts: CPU work or kernel messages do not make a kernel active. "
        "0 disables idle detection, warnings and reclaim.",
    )
    idle_after = Float(
        600.0,
        config=True,
        help="Seconds a kernel's GPUs must stay idle before the kernel shows as idle (sidebar, "
        "API). 0 disables idle detection, warnings and reclaim.",
    )
    warn_after = Float(
        1800.0,
        config=True,
        help="Seconds of idleness before the kernel's user is warned: in the notebook, as a "
        "JupyterLab notification with a Keep button, and in the event stream. At least "
        "idle_after. 0 disables warnings and reclaim (nothing is taken without a warning).",
    )
    reclaim_after = Float(
        3600.0,
        config=True,
        help="Seconds of idleness before the GPUs are reclaimed by reclaim_action. Later than "
        "warn_after: users always get reclaim_after - warn_after seconds of warning, even "
        "after a gap in sampling. 0 disables reclaim (warnings only).",
    )
    reclaim_action = Enum(
        ["release", "shutdown", "notify"],
        "release",
        config=True,
        help="What a reclaim does: 'release' frees the GPUs and restarts the kernel without "
        "them (the notebook says why at its next execution); 'shutdown' frees them and shuts "
        "the kernel down; 'notify' takes nothing and only records what would have happened "
        "(a dry run). Freed GPUs go to the head of the queue at once.",
    )
    keep_extension = Float(
        3600.0,
        config=True,
        help="Seconds that one Keep (the notification's button, or %gpu keep) holds idle GPUs "
        "longer; the next warning comes reclaim_after - warn_after before the new deadline. "
        "0 disables Keep.",
    )
    max_keeps = Int(
        3,
        config=True,
        help="Keeps allowed while GPUs stay idle; the count starts again once they are used. "
        "0 disables Keep.",
    )
    policy_overrides = Dict(
        config=True,
        help="Per-user and per-group policy: {'users': {'alice': {'reclaim_after': 7200}}, "
        "'groups': {'interns': {'reclaim_after': 1800}, 'oncall': {'exempt': True}}}. Fields "
        "as the options above (seconds; 'action' for reclaim_action), plus 'exempt'. Group "
        "overrides apply in alphabetical order of the groups, then the user's own; an "
        "exemption anywhere wins.",
    )
    exempt_users = List(
        Unicode(),
        config=True,
        help="Users whose kernels are never warned or reclaimed (same as an override "
        "{'exempt': True}).",
    )
    exempt_groups = List(
        Unicode(), config=True, help="Groups whose members are never warned or reclaimed."
    )
    admin_users = List(
        Unicode(),
        config=True,
        help="Users who may change the reclaim policy (PUT /dlinfra/api/policy, the admin "
        "panel) and run policy dry runs. Checked on the server. On a personal server, whoever "
        "logs in acts as its owner (user_name). Empty, with admin_groups empty: nobody; the "
        "policy then comes from this configuration alone.",
    )
    admin_groups = List(
        Unicode(), config=True, help="Groups whose members are admins (see admin_users)."
    )
    user_groups = Dict(
        config=True,
        help="Group membership for policy overrides and admin_groups: {'alice': ['ml']}. "
        "Added to the user's groups in the system's group database (see unix_groups).",
    )
    unix_groups = Bool(
        True,
        config=True,
        help="Also take users' groups from the system's group database when the user name is "
        "a local account. False: user_groups alone.",
    )
    usage_bucket = Float(
        60.0,
        config=True,
        help="Seconds of each kernel's GPU use summed into one stored row of history, which "
        "policy dry runs (POST /dlinfra/api/policy/simulate) replay. 0 keeps no history.",
    )
    usage_retention = Float(
        7 * 86400.0,
        config=True,
        help="Seconds of usage history kept for dry runs; older rows are deleted hourly. "
        "0 keeps no history.",
    )
    coach_window = Float(
        300.0,
        config=True,
        help="Seconds of recent samples behind the utilisation hints (input-bound, batch too "
        "small, idle between cells) in the sidebar and %gpu.",
    )

    # -- batch jobs (server/job_service.py) ------------------------------------------------

    job_backends = List(
        Unicode(),
        ["local"],
        config=True,
        help="Backends that run notebooks submitted as jobs, by name (entry-point group "
        "jupyter_dlinfra.backends): 'local' (a detached process on this node, GPUs from the "
        "ledger), 'slurm' (sbatch; SLURM places GPUs). Empty: job submission is off.",
    )
    default_backend = Unicode(
        "local",
        config=True,
        help="Backend of a submission that names none; must be one of job_backends.",
    )
    backend_options = Dict(
        config=True,
        help="Keyword options per backend, e.g. {'slurm': {'partition': 'gpu', 'env': "
        "{'SLURM_CONF': '/etc/slurm/slurm.conf'}}}. See each backend's documentation.",
    )
    jobs_dir = Unicode(
        "dlinfra-jobs",
        config=True,
        help="Directory of the jobs' snapshots, logs and outputs (one sub-directory per job). "
        "Relative: under the server's root, so JupyterLab can open the outputs. With SLURM or "
        "Kubernetes it must be on storage the job's nodes share.",
    )
    job_interval = Float(
        1.0,
        config=True,
        help="Seconds between two passes of the job loop (start what may start, poll what "
        "runs). 0 stops the loop: jobs are recorded but never started.",
    )
    max_notebook_bytes = Int(
        16 * 2**20,
        config=True,
        help="Largest notebook (bytes) that can be submitted as a job.",
    )
    max_parameter_bytes = Int(
        64 * 2**10,
        config=True,
        help="Largest set of job parameters (bytes of JSON) per job.",
    )
    max_sweep_jobs = Int(100, config=True, help="Most jobs one sweep (parameter grid) may submit.")

    # -- scheduling (docs/scheduling.md); admins may change all of these through the API --------
    priority_classes = Dict(
        {},
        config=True,
        help="Priority classes: name -> {'priority': int, 'preemptible': bool}. Higher priority "
        "is served first, whatever the fair share; the jobs of a preemptible class may be "
        "stopped and requeued for a higher class (kernels never are). Empty: interactive (100), "
        "batch (50, preemptible), low (10, preemptible).",
    )
    kernel_class = Unicode(
        "interactive",
        config=True,
        help="Class of a kernel's %gpu request unless it names one; must not be preemptible.",
    )
    job_class = Unicode("batch", config=True, help="Class of a job submitted without one.")
    fair_share = Bool(
        True,
        config=True,
        help="Within a class, serve users (and groups with a share) with less recent GPU use "
        "per share first. False: first come, first served.",
    )
    fair_share_half_life = Float(
        7 * 86400.0,
        config=True,
        help="Seconds after which past GPU use counts half as much for fair share (SLURM's "
        "PriorityDecayHalfLife). GPUs held now count as if held one more half-life.",
    )
    default_share = Float(1.0, config=True, help="Share of a user or group not listed below.")
    user_shares = Dict({}, config=True, help="Fair-share weight per user: name -> number > 0.")
    group_shares = Dict(
        {},
        config=True,
        help="Fair-share weight per group (an account): name -> number > 0. A user is in the "
        "account of the first of their groups (alphabetically) that has a share; groups are "
        "compared first, then users within them.",
    )
    default_user_quota = Int(
        None,
        allow_none=True,
        config=True,
        help="GPUs one user may hold at once; None: no limit. See also user_quotas.",
    )
    user_quotas = Dict({}, config=True, help="GPUs a user may hold at once: name -> count.")
    group_quotas = Dict(
        {}, config=True, help="GPUs the members of a group may hold together: name -> count."
    )
    quota_borrowing = Bool(
        True,
        config=True,
        help="Let jobs of a preemptible class go beyond their quota on GPUs nobody within "
        "quota wants; such borrowed GPUs are the first taken back (preempted) when others wait.",
    )
    preemption = Bool(
        True,
        config=True,
        help="Stop and requeue preemptible jobs of a lower class, or holding borrowed GPUs, for "
        "a waiting request. False: nothing is ever preempted.",
    )
    reservations = Int(
        16,
        config=True,
        help="How many blocked requests keep the free GPUs they could use for themselves in "
        "each pass (so that large requests are not starved by small ones). 0: pure backfill.",
    )
    starvation_limit = Float(
        86400.0,
        config=True,
        help="Seconds after which a waiting request goes ahead of fair-share order in its "
        "class; 0 switches this off.",
    )

    def configured_scheduling(self) -> SchedulingPolicy:
        """The scheduling policy of this configuration (before any change through the API)."""
        names = {
            "classes": "priority_classes",
            "half_life": "fair_share_half_life",
            "borrowing": "quota_borrowing",
        }
        doc: dict[str, Any] = {
            "kernel_class": self.kernel_class,
            "job_class": self.job_class,
            "fair_share": self.fair_share,
            "half_life": self.fair_share_half_life,
            "default_share": self.default_share,
            "user_shares": dict(self.user_shares),
            "group_shares": dict(self.group_shares),
            "default_user_quota": self.default_user_quota,
            "user_quotas": dict(self.user_quotas),
            "group_quotas": dict(self.group_quotas),
            "borrowing": self.quota_borrowing,
            "preemption": self.preemption,
            "reservations": self.reservations,
            "starvation_limit": self.starvation_limit,
        }
        if self.priority_classes:
            doc["classes"] = dict(self.priority_classes)
        try:
            return SchedulingPolicy.from_json(doc)
        except PolicyError as err:
            head, _, rest = err.field.partition(".")
            field = names.get(head, head) + (f".{rest}" if rest else "")
            raise TraitError(f"DLInfra.{field}: {err.message.partition(': ')[2]}") from None

    def configured_policy(self) -> ReclaimPolicy:
        """The reclaim policy of this configuration (before any change through the API)."""
        overrides = dict(self.policy_overrides)
        users = {k: dict(v) for k, v in dict(overrides.pop("users", {}) or {}).items()}
        groups = {k: dict(v) for k, v in dict(overrides.pop("groups", {}) or {}).items()}
        if overrides:
            raise TraitError(
                "DLInfra.policy_overrides takes 'users' and 'groups', not "
                + ", ".join(sorted(overrides))
            )
        for name in self.exempt_users:
            users.setdefault(name, {})["exempt"] = True
        for name in self.exempt_groups:
            groups.setdefault(name, {})["exempt"] = True
        doc = {
            "idle_util_percent": self.idle_util_percent,
            "idle_after": self.idle_after,
            "warn_after": self.warn_after,
            "reclaim_after": self.reclaim_after,
            "action": self.reclaim_action,
            "keep_extension": self.keep_extension,
            "max_keeps": self.max_keeps,
            "users": users,
            "groups": groups,
        }
        try:
            return ReclaimPolicy.from_json(doc)
        except PolicyError as err:
            field = err.field.replace("action", "reclaim_action")
            where = field if "." in field else f"DLInfra.{field}"
            raise TraitError(f"{where}: {err.message.partition(': ')[2]}") from None

    @default("simulated_gpus")
    def _default_simulated_gpus(self) -> int:
        return simulated_gpus_from_env(os.environ) or 0

    @default("simulated_gpu_models")
    def _default_simulated_models(self) -> list[str]:
        return simulated_models_from_env(os.environ) or []

    @default("simulated_load_file")
    def _default_simulated_load_file(self) -> str:
        return os.environ.get(SIMULATED_LOAD_FILE_ENV, "")

    @default("node_name")
    def _default_node_name(self) -> str:
        return socket.gethostname()

    @default("user_name")
    def _default_user_name(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("db_url")
    def _default_db_url(self) -> str:
        return default_db_url()

    @validate("events_debounce", "events_keepalive")
    def _check_events_timing(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if value < 0 or (proposal["trait"].name == "events_keepalive" and value == 0):
            raise TraitError(f"DLInfra.{proposal['trait'].name} must be positive, not {value}")
        return value

    @validate(
        "simulated_gpu_models",
        "exempt_users",
        "exempt_groups",
        "admin_users",
        "admin_groups",
        "job_backends",
    )
    def _read_list_literal(self, proposal: dict[str, Any]) -> list[str]:
        """``--DLInfra.admin_users="['alice', 'bob']"`` on a server's command line: traitlets
        reads the option before it knows the extension's classes, and its later conversion
        fails for a list of strings, leaving the whole literal as the one item."""
        value = list(proposal["value"])
        if len(value) != 1 or not (value[0].startswith("[") and value[0].endswith("]")):
            return value
        name = proposal["trait"].name
        try:
            parsed = ast.literal_eval(value[0])
        except (ValueError, SyntaxError):
            raise TraitError(
                f"DLInfra.{name}: cannot read {value[0]!r} as a list of names; write "
                f"--DLInfra.{name}=alice --DLInfra.{name}=bob, or \"['alice', 'bob']\""
            ) from None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise TraitError(f"DLInfra.{name} must be a list of names, not {value[0]}")
        return parsed

    @validate("simulated_gpus")
    def _check_simulated_gpus(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value < 0:
            raise TraitError(f"DLInfra.simulated_gpus must be 0 or more, not {value}")
        return value

    def _kernel_exists(self, kernel_id: str) -> bool:
        if kernel_id in self._server.kernel_manager:
            return True
        # a previous gateway's kernel, being taken back: it is alive, the kernel manager is late
        pods = getattr(self, "pod_kernels", None)
        return pods is not None and bool(pods.adopting(kernel_id))

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
        scheduling = self.configured_scheduling()
        self.configured_policy()
        clock = SystemClock()
        store = Store(self.db_url)
        self.directory = Directory(
            user_groups=self.user_groups,
            admin_users=self.admin_users,
            admin_groups=self.admin_groups,
            unix_groups=self.unix_groups,
        )
        ledger = Ledger(
            store,
            clock,
            policy=scheduling,
            groups_of=self.directory.groups_of,
        )
        provider = select_provider(
            simulated_gpus=self.simulated_gpus,
            simulated_models=self.simulated_gpu_models,
            node=self.node_name,
            clock=clock.now,
            simulated_load_file=self.simulated_load_file or None,
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
                multi_user=self.gateway,
                telemetry_interval=self.telemetry_interval,
                reconcile_interval=self.reconcile_interval,
                watch_interval=self.watch_interval,
                hide_unallocated_gpus=self.hide_unallocated_gpus,
                events_debounce=self.events_debounce,
                events_keepalive=self.events_keepalive,
                job_interval=self.job_interval,
            ),
            api_url=self._kernel_api_url,
            local_kernel_exists=self._kernel_exists,
            log=self.log,
        )
        self.service.reclaimer = Reclaimer(
            self.service,
            policies=PolicySource(
                self.service.idle_book, self.configured_policy(), self.directory.groups_of
            ),
            control=_KernelControl(self),
            settings=ReclaimSettings(
                usage_bucket=self.usage_bucket,
                usage_retention=self.usage_retention,
                coach_window=self.coach_window,
            ),
            log=self.log,
        )
        if self.job_backends:
            self.service.jobs = JobService(
                self.service,
                backends=self._load_backends(),
                settings=JobSettings(
                    root_dir=Path(self._server.root_dir),
                    jobs_dir=self.jobs_dir,
                    default_backend=self.default_backend,
                    max_notebook_bytes=self.max_notebook_bytes,
                    max_parameter_bytes=self.max_parameter_bytes,
                    max_sweep_jobs=self.max_sweep_jobs,
                    hide_unallocated_gpus=self.hide_unallocated_gpus,
                ),
                log=self.log,
                kernel_specs=self._server.kernel_spec_manager.get_kernel_spec,
            )
        self.service.prepare()
        self.settings["dlinfra_service"] = self.service
        self.settings["dlinfra_directory"] = self.directory
        if self.gateway:
            self.settings["dlinfra_tokens"] = TokenBook(store, clock)
        if self.kernel_backend == "kubernetes":
            self._start_kernel_pods()
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

    def _start_kernel_pods(self) -> None:
        from jupyter_dlinfra.kube.kernel_pods import PodLauncher
        from jupyter_dlinfra.provisioning.port import set_pod_port
        from jupyter_dlinfra.server.pod_kernels import PodKernels
        from jupyter_dlinfra.telemetry.cluster import ClusterProvider
        from jupyter_dlinfra.telemetry.kubernetes import KubernetesTelemetry

        if not self.gateway:
            raise TraitError("DLInfra.kernel_backend = 'kubernetes' needs DLInfra.gateway = True")
        options = dict(self.kernel_pods)
        options.setdefault("priority_classes", self._priority_classes(options))
        try:
            launcher = PodLauncher(**options)
            cluster = KubernetesTelemetry(**self.cluster_telemetry)
        except TypeError as err:
            raise TraitError(f"DLInfra.kernel_pods or DLInfra.cluster_telemetry: {err}") from None
        self.service.cluster = cluster
        # the API's "provider" is the cluster's, not this node's (which runs no kernels)
        self.service.provider.close()
        self.service.provider = ClusterProvider(cluster)
        self.pod_kernels = PodKernels(
            self.service, launcher, log=self.log, interval=self.pod_interval
        )
        self.settings["dlinfra_pod_kernels"] = self.pod_kernels
        set_pod_port(self.pod_kernels)
        try:
            self.pod_kernels.take_over()
        except BackendError as err:  # the cluster may be down now: the gateway still starts
            self.log.error("dlinfra: could not look for a previous gateway's kernel pods: %s", err)
        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        factory = KernelProvisionerFactory.instance(parent=self._server.kernel_manager)
        factory.default_provisioner_name = POD_PROVISIONER_NAME

    _ensured_priority_classes: dict[str, str] | None = None

    def _priority_classes(self, kube: dict[str, Any]) -> dict[str, str]:
        """Our class -> its Kubernetes PriorityClass, as kubernetes_priority_classes says."""
        if self.kubernetes_priority_classes == "off":
            return {}
        from jupyter_dlinfra.backends.kubernetes import ensure_priority_classes, priority_class_name
        from jupyter_dlinfra.kube.api import KubeApi

        classes = self.service.ledger.scheduling_policy().classes
        if self.kubernetes_priority_classes == "map":
            return {c.name: priority_class_name(c.name) for c in classes}
        if self._ensured_priority_classes is None:
            # once at start, for pods and Jobs alike
            api = KubeApi(kubeconfig=kube.get("kubeconfig"), context=kube.get("context"))
            try:
                self._ensured_priority_classes = ensure_priority_classes(api.client(), classes)
            finally:
                api.close()
        return dict(self._ensured_priority_classes)

    def initialize_handlers(self) -> None:
        if self._forwarding():
            from jupyter_server.gateway.connections import GatewayWebSocketConnection

            from jupyter_dlinfra.server.forwarding.api import FORWARD_ROUTES
            from jupyter_dlinfra.server.forwarding.kernel_ws import OrderedGatewayConnection

            self.handlers.extend(FORWARD_ROUTES)
            settings = self._server.web_app.settings
            if settings.get("kernel_websocket_connection_class") is GatewayWebSocketConnection:
                # only jupyter_server's default is replaced, never a class someone configured
                settings["kernel_websocket_connection_class"] = OrderedGatewayConnection
            return
        if self.gateway:
            # matched before jupyter_server's own kernel routes: these check owners
            from jupyter_dlinfra.gateway.kernels import KERNEL_ROUTES

            self.handlers.extend(KERNEL_ROUTES)
        self.handlers.extend((pattern, handler) for pattern, handler, _ in ROUTES)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        service = getattr(self, "service", None)
        if service is not None:  # None: the extension failed to load (its error is logged)
            await service.start()
            if getattr(self, "pod_kernels", None) is not None:
                self.pod_kernels.start(self._server.kernel_manager)

    async def stop_extension(self) -> None:
        # jupyter_server stops extensions before it shuts kernels down; shut ours down first,
        # while the ledger can still hear that their GPUs are free
        service = getattr(self, "service", None)
        if service is None:
            return
        km = self._server.kernel_manager
        pods = getattr(self, "pod_kernels", None)
        if pods is not None and self.keep_kernel_pods_on_stop:
            kept = pods.leave_running(km)
            if kept:
                self.log.info("dlinfra: kernels left running for the next gateway: %s", kept)
        if len(km.list_kernel_ids()):
            await km.shutdown_all()
        if pods is not None:
            from jupyter_dlinfra.provisioning.port import set_pod_port

            await self.pod_kernels.stop()
            set_pod_port(None)
        await service.stop()
        set_port(None)

    @property
    def _server(self) -> Any:
        if self.serverapp is None:
            raise RuntimeError("the dlinfra extension is not linked to a server yet")
        return self.serverapp

    def _load_backends(self) -> dict[str, JobBackend]:
        found = {ep.name: ep for ep in entry_points(group="jupyter_dlinfra.backends")}
        if self.default_backend not in self.job_backends:
            raise TraitError(
                f"DLInfra.default_backend {self.default_backend!r} is not in "
                f"DLInfra.job_backends {list(self.job_backends)}"
            )
        backends: dict[str, JobBackend] = {}
        for name in self.job_backends:
            if name not in found:
                raise TraitError(
                    f"DLInfra.job_backends: no backend {name!r}; installed: "
                    + ", ".join(sorted(found))
                )
            options = dict(self.backend_options.get(name, {}))
            if name == "kubernetes" and self.kubernetes_priority_classes != "off":
                options.setdefault("priority_classes", self._priority_classes(options))
            try:
                backends[name] = found[name].load()(**options)
            except TypeError as err:
                raise TraitError(f"DLInfra.backend_options[{name!r}]: {err}") from None
        return backends

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


class _KernelControl:
    """The reclaim loop's hands on this server's kernel manager."""

    def __init__(self, app: DLInfra) -> None:
        self._app = app

    @property
    def _km(self) -> Any:
        return self._app._server.kernel_manager

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
