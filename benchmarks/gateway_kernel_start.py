"""Kernel start through the team gateway against a local kernel, and `%gpu 2` to a bound pod.

Part 1, in one run: a plain personal ``jupyter server`` with the dlinfra extension ("local": the
kernel is a process of that server, dlinfra provisioner, 4 simulated GPUs) next to a team gateway
(``jupyter dlinfra gateway``, local kernel backend) and a person's server started with
``--gateway-url`` and that person's issued gateway token ("gateway": the person's server forwards
the kernel to the gateway, which runs it). Alternating between the two (ABBA order, so that drift
and load spikes hit both alike), it times, per kernel, from just before ``POST /api/kernels`` to
the shell ``execute_reply`` of a ``pass`` sent over the kernel websocket of the server the person
talks to (connection retries while the kernel starts are counted). Deleting the kernel is not
timed. ``gateway_start_ratio`` is median(gateway) / median(local).

Part 2: a real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler,
kube-controller-manager from ``jupyter_dlinfra.testing.k8s``, in the temporary directory) with a
node agent playing the kubelet of two fake GPU nodes (4 and 2 GPUs), a gateway with
``kernel_backend = "kubernetes"`` (``pod_interval`` 0.2 s) and a person's server pointed at it.
Per round: start a kernel (it runs in a pod without GPUs), then send ``%gpu 2 --no-wait`` and
measure, from just before sending the cell, with one long-lived watch of the kernel pods, until
the kernel's new pod asking ``nvidia.com/gpu: 2`` exists, is bound to a node by kube-scheduler
(``spec.nodeName`` set: ``pod_bind_s``) and runs, and, polling ``GET dlinfra/api/allocations`` on
the person's server every 20 ms, until the ledger shows the request granted (``grant_s``; the
gateway notices the running pod at its next pod reading, so this includes up to one
``pod_interval``). Then the kernel is shut down and the next round waits until its pods and its
allocation are gone.

Usage: ``.venv/bin/python benchmarks/gateway_kernel_start.py [--rounds N] [--k8s-rounds N]
[--skip-k8s]``. ``--skip-k8s`` leaves part 2 out (for machines without the control plane's
binaries, see ``scripts/k8s/build.sh``); ``pod_bind_s`` and ``grant_s`` are then ``nan``. The last
line printed starts with ``RESULT`` and holds key=value pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import urllib3

from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.kube.kernel_pods import COMPONENT, COMPONENT_LABEL, KERNEL_ID_LABEL
from jupyter_dlinfra.testing.k8s import ControlPlane, FakeNode, NodeAgent, k8s_bin_dir
from jupyter_dlinfra.testing.kubelet import GPU_RESOURCE
from jupyter_dlinfra.testing.server import (
    ServerProcess,
    close_response,
    connect_kernel,
    execute_request,
    response_lines,
    wait_until,
)

# kernel_start.py beside this file: found when this runs as a script and when it is loaded by path
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from kernel_start import delete_kernel, time_kernel_start  # noqa: E402

SIMULATED_GPUS = 4
GATEWAY = ("-m", "jupyter_dlinfra.cli", "gateway")
GATEWAY_ARGS = ("--DLInfra.admin_users=admin", "--DLInfra.reconcile_interval=1")
USER = "alice"
K8S_BINARIES = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")
NODES = (
    FakeNode(name="gpu-a", gpus=4, model="NVIDIA-A100-SXM4-80GB"),
    FakeNode(name="gpu-b", gpus=2, model="NVIDIA-H100-80GB-HBM3"),
)
NAMESPACE = "default"
POD_INTERVAL_S = 0.2
GPU_REQUEST = 2
GPU_CELL = f"%gpu {GPU_REQUEST} --no-wait"
#: how often the ledger is asked whether the request is granted
GRANT_POLL_S = 0.02
POD_SELECTOR = f"{COMPONENT_LABEL}={COMPONENT}"
#: seconds a kernel may take to start and answer `pass`, and to be gone once deleted
START_TIMEOUT_S = 120.0
DELETE_TIMEOUT_S = 60.0


# -- kernels (started and timed by kernel_start.py's helpers) --------------------------------------


def run_code(server: ServerProcess, kernel_id: str, code: str, *, timeout: float = 60.0) -> str:
    """Run ``code`` in a kernel; its stdout and stderr. Any error raises."""
    session = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    ws = connect_kernel(server, kernel_id, session, deadline)
    out: list[str] = []
    replied = idle = False
    try:
        ws.send(execute_request(session, msg_id, code, username="bench", store_history=False))
        while not (replied and idle):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout} s to {code!r} ({''.join(out)})")
            ws.settimeout(remaining)
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "execute_reply":
                replied = True
                if content.get("status") != "ok":
                    raise RuntimeError(f"{code!r} failed: {content} ({''.join(out)})")
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            elif kind == "stream":
                out.append(content["text"])
            elif kind in ("display_data", "update_display_data", "execute_result"):
                out.append(content.get("data", {}).get("text/plain", ""))
    finally:
        ws.close()
    return "".join(out)


# -- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between the closest ranks; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass(frozen=True)
class Summary:
    p50: float
    p90: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            median(values),
            percentile(values, 90),
            statistics.fmean(values),
            min(values),
            max(values),
        )


# -- servers ---------------------------------------------------------------------------------------


class Stack:
    """Every server this run started, in start order, so that all are stopped whatever fails."""

    def __init__(self) -> None:
        self.servers: dict[str, ServerProcess] = {}

    def start(self, name: str, server: ServerProcess) -> ServerProcess:
        server.workdir.mkdir(parents=True, exist_ok=True)
        self.servers[name] = server
        return server.start()

    def dump_logs(self) -> None:
        for name, server in self.servers.items():
            text = server.log_text()
            if text:
                print(f"--- {name} server log (tail) ---\n{text[-3000:]}", file=sys.stderr)

    def stop(self) -> None:
        # people's servers first (they shut their kernels down through the gateway), newest first
        for name, server in reversed(list(self.servers.items())):
            try:
                server.stop()
            except Exception as err:
                print(f"stopping {name} failed ({err}); killing it", file=sys.stderr)
                server.crash()
        self.servers.clear()


def start_team(stack: Stack, base: Path, name: str, *, config: str = "") -> dict[str, str]:
    """A gateway with its own SQLite ledger; returns the issued tokens (user -> token)."""
    workdir = base / name
    workdir.mkdir(parents=True)
    db_url = f"sqlite:///{workdir / 'team.sqlite'}"
    book = TokenBook(Store(db_url), SystemClock())
    tokens = {user: book.issue(user, by="benchmark").token for user in (USER, "admin")}
    if config:
        # ServerProcess points JUPYTER_CONFIG_DIR at workdir/config
        (workdir / "config").mkdir()
        (workdir / "config" / "jupyter_dlinfra_gateway_config.py").write_text(config)
    stack.start(
        name,
        ServerProcess(
            workdir,
            db_url=db_url,
            simulated_gpus=SIMULATED_GPUS,
            token=tokens["admin"],
            program=GATEWAY,
            extra_args=GATEWAY_ARGS,
        ),
    )
    return tokens


def start_person(
    stack: Stack, base: Path, name: str, gateway: ServerProcess, token: str, *extra: str
) -> ServerProcess:
    """A person's own server that forwards kernels to ``gateway`` with their issued token."""
    workdir = base / name
    return stack.start(
        name,
        ServerProcess(
            workdir,
            # never opened: a server that forwards to a gateway keeps no ledger
            db_url=f"sqlite:///{workdir / 'unused.sqlite'}",
            extra_args=(
                f"--gateway-url={gateway.url}",
                f"--GatewayClient.auth_token={token}",
                *extra,
            ),
        ),
    )


# -- part 1: kernel start, local against through the gateway ---------------------------------------


@dataclass(frozen=True)
class StartResult:
    rounds: int
    warmup: int
    local: list[float]
    gateway: list[float]

    @property
    def ratio(self) -> float:
        return median(self.gateway) / median(self.local)

    @property
    def paired_diff_ms(self) -> float:
        return median([(g - a) * 1000 for a, g in zip(self.local, self.gateway, strict=True)])


def verify_gateway_path(person: ServerProcess, gateway: ServerProcess, token: str) -> None:
    """The person's kernels must really run on the gateway, under their name."""
    kernel_id = person.post("api/kernels", {"name": "python3"})["id"]
    try:
        status, listed, _ = gateway.request(
            "GET", "api/kernels", headers={"Authorization": f"token {token}"}
        )
        if status != 200 or kernel_id not in {k["id"] for k in listed}:
            raise RuntimeError(f"kernel {kernel_id} is not on the gateway: {status} {listed}")
        has_id = run_code(
            person, kernel_id, "import os; print(bool(os.environ.get('DLINFRA_KERNEL_ID')))"
        )
        if has_id.strip() != "True":
            raise RuntimeError("the gateway's kernel runs without the dlinfra provisioner")
    finally:
        delete_kernel(person, kernel_id, timeout=DELETE_TIMEOUT_S)


def measure_start(base: Path, rounds: int, warmup: int) -> StartResult:
    stack = Stack()
    samples: dict[str, list[float]] = {"local": [], "gateway": []}
    try:
        local = stack.start(
            "local",
            ServerProcess(
                base / "local",
                db_url=f"sqlite:///{base / 'local' / 'ledger.sqlite'}",
                simulated_gpus=SIMULATED_GPUS,
            ),
        )
        tokens = start_team(stack, base, "gateway")
        person = start_person(stack, base, "person", stack.servers["gateway"], tokens[USER])
        verify_gateway_path(person, stack.servers["gateway"], tokens[USER])
        servers = {"local": local, "gateway": person}
        for i in range(warmup + rounds):
            order = ("local", "gateway") if i % 2 == 0 else ("gateway", "local")
            for name in order:
                sample, kernel_id = time_kernel_start(servers[name], timeout=START_TIMEOUT_S)
                delete_kernel(servers[name], kernel_id, timeout=DELETE_TIMEOUT_S)
                if i >= warmup:
                    samples[name].append(sample.replied)
    except BaseException:
        stack.dump_logs()
        raise
    finally:
        stack.stop()
    return StartResult(rounds, warmup, samples["local"], samples["gateway"])


# -- part 2: %gpu 2 to a bound pod on a real control plane -----------------------------------------


@dataclass
class PodSeen:
    """When (perf_counter) the watch first saw a kernel pod exist, bound, running, deleted."""

    name: str
    kernel_id: str
    gpus: int
    added: float
    node: str = ""
    bound: float | None = None
    running: float | None = None
    deleted: float | None = None


def _gpus(pod: dict[str, Any]) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(limits.get(GPU_RESOURCE, 0) or 0)
    return total


class PodWatch:
    """One long-lived watch of every kernel pod in a namespace, started before the first round so
    that an event's arrival time is when the apiserver sent it, not a connection set-up."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace = namespace
        self.pods: dict[str, PodSeen] = {}  # by uid
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        rv = self._list()
        self._thread = threading.Thread(
            target=self._loop, args=(rv,), name="bench-pod-watch", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
            close_response(response)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _list(self) -> str:
        response = self.core.list_namespaced_pod(
            self.namespace, label_selector=POD_SELECTOR, _preload_content=False
        )
        doc = json.loads(response.data)
        now = time.perf_counter()
        for pod in doc.get("items") or []:
            self._on_pod(pod, now, deleted=False)
        return str(doc["metadata"]["resourceVersion"])

    def _loop(self, rv: str | None) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                response = self.core.list_namespaced_pod(
                    self.namespace,
                    label_selector=POD_SELECTOR,
                    watch=True,
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=600,
                    _preload_content=False,
                    _request_timeout=(10, 660),
                )
                with self._cond:
                    self._response = None if self._stop.is_set() else response
                if self._response is None:
                    close_response(response)
                    break
                try:
                    for line in response_lines(response):
                        now = time.perf_counter()
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":  # e.g. 410 Gone: list again
                            rv = None
                            break
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._on_pod(obj, now, deleted=event["type"] == "DELETED")
                finally:
                    with self._cond:
                        self._response = None
                    close_response(response)
                failures = 0
            except Exception as err:
                if self._stop.is_set():
                    break
                failures += 1
                if failures >= 5:
                    with self._cond:
                        self.error = err
                        self._cond.notify_all()
                    return
                rv = None
                self._stop.wait(0.2)

    def _on_pod(self, pod: dict[str, Any], now: float, *, deleted: bool) -> None:
        meta = pod["metadata"]
        node = (pod.get("spec") or {}).get("nodeName") or ""
        phase = (pod.get("status") or {}).get("phase")
        with self._cond:
            seen = self.pods.get(meta["uid"])
            if seen is None:
                seen = PodSeen(
                    name=meta["name"],
                    kernel_id=(meta.get("labels") or {}).get(KERNEL_ID_LABEL, ""),
                    gpus=_gpus(pod),
                    added=now,
                )
                self.pods[meta["uid"]] = seen
            if node and seen.bound is None:
                seen.bound, seen.node = now, node
            if phase == "Running" and seen.running is None:
                seen.running = now
            if deleted and seen.deleted is None:
                seen.deleted = now
            self._cond.notify_all()

    def wait_for(
        self, find: Callable[[list[PodSeen]], PodSeen | None], *, timeout: float, what: str
    ) -> PodSeen:
        with self._cond:
            found: PodSeen | None = None

            def ready() -> bool:
                nonlocal found
                found = find(list(self.pods.values()))
                return found is not None or self.error is not None

            if not self._cond.wait_for(ready, timeout=timeout):
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            if found is None:
                raise RuntimeError(f"the pod watch failed: {self.error}")
            return found


class GrantPoll:
    """Polls the person's allocations every GRANT_POLL_S until the kernel's request is granted."""

    def __init__(self, server: ServerProcess, kernel_id: str, *, timeout: float) -> None:
        self.server = server
        self.kernel_id = kernel_id
        self.timeout = timeout
        self.at: float | None = None
        self.allocation: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-grant-poll", daemon=True)

    def start(self) -> GrantPoll:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self._stop.is_set():
                listed = self.server.get("dlinfra/api/allocations")["allocations"]
                now = time.perf_counter()
                for alloc in listed:
                    if alloc["kernel_id"] == self.kernel_id and alloc["state"] == "granted":
                        self.at, self.allocation = now, alloc
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no grant for kernel {self.kernel_id} in {self.timeout} s: {listed}"
                    )
                self._stop.wait(GRANT_POLL_S)
        except BaseException as err:
            self.error = err

    def result(self) -> tuple[float, dict[str, Any]]:
        self._thread.join(timeout=self.timeout + 30)
        if self.error is not None:
            raise self.error
        if self.at is None or self.allocation is None:
            raise TimeoutError(f"no grant for kernel {self.kernel_id}")
        return self.at, self.allocation

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class GpuRound:
    """Seconds from just before sending the `%gpu` cell; ``start`` is the kernel's own start."""

    start: float
    reply: float
    created: float
    bound: float
    running: float
    granted: float
    node: str


@dataclass(frozen=True)
class PodResult:
    rounds: list[GpuRound]
    warmup: int


def k8s_config(kubeconfig: Path) -> str:
    kube = {"kubeconfig": str(kubeconfig)}
    return "\n".join(
        [
            'c.DLInfra.kernel_backend = "kubernetes"',
            f"c.DLInfra.kernel_pods = {json.dumps({**kube, 'namespace': NAMESPACE})}",
            f"c.DLInfra.cluster_telemetry = {json.dumps(kube)}",
            f"c.DLInfra.pod_interval = {POD_INTERVAL_S}",
            "",
        ]
    )


def pods_of(core: kubernetes.client.CoreV1Api, kernel_id: str) -> list[Any]:
    selector = f"{KERNEL_ID_LABEL}={kernel_id}"
    return list(core.list_namespaced_pod(NAMESPACE, label_selector=selector).items)


def gpu_round(
    person: ServerProcess, watch: PodWatch, core: kubernetes.client.CoreV1Api
) -> GpuRound:
    sample, kernel_id = time_kernel_start(person, timeout=180)
    try:
        timed = _time_gpu_request(person, watch, core, kernel_id)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that matters is the one above
            delete_kernel(person, kernel_id, timeout=DELETE_TIMEOUT_S)
        raise
    delete_kernel(person, kernel_id, timeout=DELETE_TIMEOUT_S)
    wait_until(
        lambda: (
            not pods_of(core, kernel_id)
            and all(
                a["kernel_id"] != kernel_id
                for a in person.get("dlinfra/api/allocations")["allocations"]
            )
        ),
        timeout=90,
        interval=0.1,
        what=f"the pods and GPUs of kernel {kernel_id} to be gone",
    )
    return GpuRound(sample.replied, *timed)


def _time_gpu_request(
    person: ServerProcess, watch: PodWatch, core: kubernetes.client.CoreV1Api, kernel_id: str
) -> tuple[float, float, float, float, float, str]:
    """Send the `%gpu` cell; seconds to its reply, the GPU pod created, bound, running, the
    ledger's grant, and the pod's node."""
    first = [p for p in pods_of(core, kernel_id) if p.spec.node_name]
    if len(first) != 1 or _gpus(core.api_client.sanitize_for_serialization(first[0])):
        raise RuntimeError(f"kernel {kernel_id}: expected one bound pod without GPUs: {first}")

    def gpu_pod(running: bool) -> Callable[[list[PodSeen]], PodSeen | None]:
        def find(pods: list[PodSeen]) -> PodSeen | None:
            for pod in pods:
                mine = pod.kernel_id == kernel_id and pod.gpus == GPU_REQUEST
                if mine and pod.bound and (pod.running or not running):
                    return pod
            return None

        return find

    poll = GrantPoll(person, kernel_id, timeout=120).start()
    try:
        t0 = time.perf_counter()
        out = run_code(person, kernel_id, GPU_CELL, timeout=120)
        t_reply = time.perf_counter()
        what = f"the {GPU_REQUEST}-GPU pod of kernel {kernel_id} (the cell said {out.strip()!r})"
        pod = watch.wait_for(gpu_pod(False), timeout=120, what=f"{what} to be bound")
        pod = watch.wait_for(gpu_pod(True), timeout=120, what=f"{what} to run")
        t_grant, alloc = poll.result()
    finally:
        poll.cancel()
    if alloc["count"] != GPU_REQUEST or alloc["node"] != pod.node:
        raise RuntimeError(f"the ledger's grant {alloc} is not the bound pod's ({pod})")
    assert pod.bound is not None and pod.running is not None
    return (
        t_reply - t0,
        pod.added - t0,
        pod.bound - t0,
        pod.running - t0,
        t_grant - t0,
        pod.node,
    )


def measure_pods(base: Path, rounds: int, warmup: int) -> PodResult:
    # the apiserver's certificate is self-signed and its kubeconfig skips verification
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    agent_log = logging.getLogger("jupyter_dlinfra.testing.k8s")
    handler = logging.FileHandler(base / "node-agent.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    agent_log.addHandler(handler)
    agent_log.setLevel(logging.INFO)
    agent_log.propagate = False  # into its file, not onto the table
    plane = ControlPlane(base / "k8s")
    agent: NodeAgent | None = None
    watch: PodWatch | None = None
    api: kubernetes.client.ApiClient | None = None
    stack = Stack()
    done: list[GpuRound] = []
    try:
        plane.start(timeout=180)
        api = plane.api_client()
        agent = NodeAgent(plane.api_client(), NODES, workdir=base / "agent")
        agent.start()
        core = kubernetes.client.CoreV1Api(api)
        watch = PodWatch(api, NAMESPACE)
        watch.start()
        tokens = start_team(stack, base, "k8s-gateway", config=k8s_config(plane.kubeconfig))
        person = start_person(
            stack,
            base,
            "k8s-person",
            stack.servers["k8s-gateway"],
            tokens[USER],
            "--GatewayClient.request_timeout=180",
        )
        for _ in range(warmup + rounds):
            done.append(gpu_round(person, watch, core))
    except BaseException:
        stack.dump_logs()
        for path in [*plane.log_files(), base / "node-agent.log"]:
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace")[-1500:]
                print(f"--- {path.name} (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        stack.stop()
        if watch is not None:
            watch.stop()
        if agent is not None:
            agent.stop()
        if api is not None:
            api.close()
        plane.stop()
        agent_log.removeHandler(handler)
        handler.close()
    return PodResult(done[warmup:], warmup)


# -- report ----------------------------------------------------------------------------------------


def _row(label: str, values: Sequence[float], width: int = 28) -> str:
    s = Summary.of(values)
    cells = "".join(f"{v:>8.3f}" for v in (s.p50, s.p90, s.mean, s.min, s.max))
    return f"{label:<{width}}{cells}"


def _header(width: int = 28) -> str:
    return f"{'':<{width}}" + "".join(f"{h:>8}" for h in ("p50", "p90", "mean", "min", "max"))


def report(start: StartResult, pods: PodResult | None, skipped_why: str = "") -> str:
    lines = [
        f"kernel start, POST api/kernels -> execute_reply of `pass` (s); {start.rounds} rounds "
        f"(+{start.warmup} warm-up), alternating local/gateway",
        _header(),
        _row("local (personal server)", start.local),
        _row("gateway (person -> gateway)", start.gateway),
        f"gateway/local p50: {start.ratio:.2f}; gateway - local, median of per-round "
        f"differences: {start.paired_diff_ms:+.1f} ms",
        "",
    ]
    rounds = pods.rounds if pods is not None else []
    if pods is None:
        lines.append(f"%gpu {GPU_REQUEST} on Kubernetes: skipped ({skipped_why}); pod_bind_s=nan")
    else:
        nodes = " + ".join(f"{n.name}={n.gpus}" for n in NODES)
        lines += [
            f"`{GPU_CELL}` on a real control plane (kube-scheduler binds; fake nodes {nodes} "
            f"GPUs; pod_interval {POD_INTERVAL_S} s), s after sending the cell; "
            f"{len(rounds)} rounds (+{pods.warmup} warm-up)",
            f"{'round':<7}{'node':<8}"
            + "".join(f"{h:>9}" for h in ("reply", "created", "bound", "running", "granted")),
        ]
        for i, r in enumerate(rounds, 1):
            cells = (r.reply, r.created, r.bound, r.running, r.granted)
            lines.append(f"{i:<7}{r.node:<8}" + "".join(f"{v:>9.3f}" for v in cells))
        lines += [
            _header(),
            _row("cell replied (queued)", [r.reply for r in rounds]),
            _row("GPU pod created", [r.created for r in rounds]),
            _row("GPU pod bound (pod_bind_s)", [r.bound for r in rounds]),
            _row("GPU pod running", [r.running for r in rounds]),
            _row("ledger granted (grant_s)", [r.granted for r in rounds]),
            _row("kernel start in a pod", [r.start for r in rounds]),
        ]
    fields = {
        "gateway_start_ratio": f"{start.ratio:.2f}",
        "pod_bind_s": f"{median([r.bound for r in rounds]):.3f}",
        "pod_bind_p90_s": f"{percentile([r.bound for r in rounds], 90):.3f}",
        "grant_s": f"{median([r.granted for r in rounds]):.3f}",
        "grant_p90_s": f"{percentile([r.granted for r in rounds], 90):.3f}",
        "pod_create_s": f"{median([r.created for r in rounds]):.3f}",
        "pod_running_s": f"{median([r.running for r in rounds]):.3f}",
        "pod_kernel_start_s": f"{median([r.start for r in rounds]):.3f}",
        "local_p50_s": f"{median(start.local):.3f}",
        "local_p90_s": f"{percentile(start.local, 90):.3f}",
        "gateway_p50_s": f"{median(start.gateway):.3f}",
        "gateway_p90_s": f"{percentile(start.gateway, 90):.3f}",
        "paired_diff_ms": f"{start.paired_diff_ms:.1f}",
        "rounds": str(start.rounds),
        "k8s_rounds": str(len(rounds)),
    }
    lines.append("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return "\n".join(lines)


def missing_k8s_binaries() -> list[str]:
    bin_dir = k8s_bin_dir()
    return [str(bin_dir / b) for b in K8S_BINARIES if not os.access(bin_dir / b, os.X_OK)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="kernel starts per side (10)")
    parser.add_argument("--k8s-rounds", type=int, default=5, help="`%%gpu 2` rounds (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before each part (1)")
    parser.add_argument(
        "--skip-k8s",
        action="store_true",
        help="leave the Kubernetes part out (no control plane binaries): pod_bind_s=nan",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.k8s_rounds < 1 or args.warmup < 0:
        parser.error("--rounds and --k8s-rounds must be >= 1, --warmup >= 0")
    if not args.skip_k8s:
        missing = missing_k8s_binaries()
        if missing:
            print(
                f"error: Kubernetes binaries missing: {', '.join(missing)}. Build them with "
                "scripts/k8s/build.sh (or set DLINFRA_K8S_BIN), or run with --skip-k8s.",
                file=sys.stderr,
            )
            return 2
    with tempfile.TemporaryDirectory(
        prefix="dlinfra-bench-gw-start-", ignore_cleanup_errors=True
    ) as tmp:
        base = Path(tmp)
        start = measure_start(base / "start", args.rounds, args.warmup)
        pods = None
        if not args.skip_k8s:
            (base / "pods").mkdir()
            pods = measure_pods(base / "pods", args.k8s_rounds, args.warmup)
    print(report(start, pods, skipped_why="--skip-k8s"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
