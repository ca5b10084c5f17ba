"""Crash soak: a churn of GPU requests, releases, kernel restarts and job submissions against a
real server that is killed with SIGKILL at random moments, on SQLite and on PostgreSQL.

Two servers share the ledger, as two servers of one person on one node do: ``victim`` is killed
(mid-request, mid-restart, mid-submission: whatever it was doing) and restarted on the same
ledger; ``survivor`` lives throughout, so its kernels hold and queue across every crash. The
victim's kernels end with it (ipykernel's parent poller), its jobs run on (their own session).
After each restart the ledger must show what the product promises:

- no GPU is held twice;
- every holder of GPUs, or of a place in the queue, lives: the restarted server's reconcile has
  released the kernels that died with the crash (before it answers its first request), and a
  job holds GPUs only while it is queued or its process runs;
- no job is lost or run twice: every job whose submission was answered is in the ledger, and its
  notebook ran at most once per attempt (preemption requeues a job to start afresh);
- every request that was queued at the crash is still queued, in the same order, unless it was
  granted since or its kernel died; what the survivor's kernels were granted, they still hold.

The churn is drawn from a seeded generator (``DLINFRA_SOAK_SEED``; the seed is printed); thread
timing is not reproducible, so a failure names its seed and cycle, and the server logs are kept.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME, JobBook, JobState
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.server.liveness import pid_alive
from jupyter_dlinfra.testing.server import ServerProcess, wait_until, write_notebook

SEED = int(os.environ.get("DLINFRA_SOAK_SEED", "1313"))
#: kills per database: 20 in all
KILLS = 10
GPUS = 2
RUNNER = "jupyter_dlinfra.jobs.runner"
#: a kernel registered with no process yet counts as alive this long (ServiceSettings)
LAUNCH_GRACE_S = 300.0
#: the servers reconcile this often (tests/e2e/conftest.py): a kernel past its grace goes then
RECONCILE_S = 1.0
#: churn threads per cycle
WORKERS = 3
#: the ledger's server alone: JupyterLab, the language servers and terminals only slow each start
SERVER_ARGS = (
    "--DLInfra.job_interval=0.2",
    "--ServerApp.jpserver_extensions={'jupyterlab': False, 'jupyter_lsp': False, "
    "'jupyter_server_terminals': False, 'notebook_shim': False, 'notebook': False}",
)
#: how often each action is drawn
ACTIONS = {
    "request": 5,
    "release": 2,
    "read": 2,
    "restart": 1,
    "gpu_restart": 1,
    "submit": 1,
    "start_kernel": 1,
}
#: at most this many of the costly actions (a process to start) per cycle: two CPUs
BUDGET = {"restart": 1, "gpu_restart": 1, "submit": 1, "start_kernel": 1}


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


@pytest.mark.timeout(600)
def test_crash_soak(
    ledger_url: str, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    soak = Soak(ledger_url, start_server, tmp_path)
    try:
        for cycle in range(KILLS):
            soak.cycle(cycle)
        soak.finish()
    finally:
        soak.close()
    print(f"crash soak: seed {SEED}, {soak.kills} kills, {soak.stats}")


@dataclass
class Kernel:
    server: ServerProcess
    kernel_id: str
    survivor: bool
    token: str | None = None
    pid: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: a /dlinfra restart is asynchronous: until its new process runs, the kernel is left alone
    restarting_from: int | None = None


@dataclass(frozen=True)
class Snapshot:
    """The ledger right after a crash (the survivor may change it since, within the rules)."""

    queue: list[int]
    active: dict[int, Any]
    jobs: dict[int, Any]


class Soak:
    def __init__(
        self, url: str, start_server: Callable[..., ServerProcess], tmp_path: Path
    ) -> None:
        self.url = url
        self.rng = random.Random(f"{SEED}-{url.split(':')[0]}")
        self.ledger = Ledger(Store(url), SystemClock())
        self.book = JobBook(self.ledger.store, self.ledger.clock)
        self.runs = tmp_path / "runs.txt"
        self.runs.touch()
        self.victim = start_server(gpus=GPUS, db_url=url, args=SERVER_ARGS)
        self.survivor = start_server(gpus=GPUS, db_url=url, args=SERVER_ARGS)
        write_notebook(
            self.victim.workdir / "root" / "job.ipynb",
            ("tag = 'none'\nhold = 0.0", ["parameters"]),
            f"with open({str(self.runs)!r}, 'a') as runs:\n    runs.write(tag + '\\n')",
            "import time\ntime.sleep(hold)",
        )
        self.kernels: list[Kernel] = [self._start_kernel(self.survivor) for _ in range(3)]
        self.lock = threading.Lock()
        #: job id -> tag, for every submission the server answered with 201
        self.submitted: dict[int, str] = {}
        self.tags = 0
        self.kills = 0
        self.stats: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.budget: dict[str, int] = {}

    def close(self) -> None:
        self.ledger.store.engine.dispose()

    # -- one cycle: churn, kill, restart, check ------------------------------------------------

    def cycle(self, number: int) -> None:
        began = time.monotonic()
        self.budget = dict(BUDGET)
        stop = threading.Event()
        workers = [
            threading.Thread(
                target=self._work, args=(random.Random(self.rng.random()), stop), daemon=True
            )
            for _ in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        # often just after an action began (mid-request), else anywhere in a few seconds
        delay = self.rng.uniform(0.0, 0.3) if self.rng.random() < 0.3 else self.rng.uniform(0.3, 2)
        time.sleep(delay)
        dying = self._kernel_processes(self.victim)
        self.victim.crash()
        # and one it was starting as it died
        dying += self._kernel_processes(self.victim)
        self.kills += 1
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
            assert not worker.is_alive(), "a churn thread hangs"
        self._settle_restarts()
        with self.lock:
            self.kernels = [k for k in self.kernels if k.survivor]
        crash = self._snapshot()
        # ipykernel's parent poller ends the victim's kernels: wait for that, as the product does
        wait_until(
            lambda: not any(_running(p) for p in dying),
            timeout=30,
            what="the crashed server's kernels to end",
        )
        ended = time.monotonic()
        self._restart_victim()
        restarted = time.monotonic()
        where = f"seed {SEED}, {self.url.split(':')[0]}, cycle {number} (kill after {delay:.2f} s)"
        self._check(crash, where)
        print(
            f"{where}: {len(crash.queue)} queued, {len(crash.active)} active, "
            f"{sum(j.state is JobState.RUNNING for j in crash.jobs.values())} jobs running "
            "at the crash; "
            f"kernels ended {ended - began - delay:.1f} s, restart {restarted - ended:.1f} s, "
            f"check {time.monotonic() - restarted:.1f} s"
        )

    def _restart_victim(self) -> None:
        try:
            self.victim.start(same_port=True)
        except RuntimeError:  # the port was taken meanwhile (a kernel bound it): another one
            self.victim.start()

    def finish(self) -> None:
        """Release every kernel's GPUs; every answered job must then run to success, once."""
        for alloc in self.ledger.allocations():
            if not alloc.kernel_id.startswith("job-"):
                status, body = self._checked(
                    self.survivor, "DELETE", f"dlinfra/api/allocations/{alloc.id}"
                )
                assert status == 204, body

        def all_ended() -> bool:
            return all(not self.book.job(j).state.active for j in self.submitted)

        wait_until(all_ended, timeout=120, interval=0.2, what="every job to end")
        runs = Counter(self.runs.read_text().split())
        for job_id, tag in self.submitted.items():
            job = self.book.job(job_id)
            assert job.state is JobState.SUCCEEDED, f"{job}\n{self._log(job)}"
            assert 1 <= runs[tag] <= job.attempts + 1, (job, runs[tag])
            self.stats["preempted"] += job.attempts
        assert not self.server_errors, self.server_errors
        self.stats["jobs"] = len(self.submitted)

    # -- the churn -----------------------------------------------------------------------------

    def _work(self, rng: random.Random, stop: threading.Event) -> None:
        names = list(ACTIONS)
        weights = [ACTIONS[n] for n in names]
        while not stop.is_set():
            action = rng.choices(names, weights)[0]
            with self.lock:
                if self.budget.get(action, 1) <= 0:
                    continue
                if action in self.budget:
                    self.budget[action] -= 1
            try:
                getattr(self, f"_do_{action}")(rng)
            except (OSError, http.client.HTTPException):
                self.stats["cut"] += 1  # the server died under the request: what this is about
            self.stats[action] += 1
            time.sleep(rng.uniform(0.0, 0.1))

    def _pick(self, rng: random.Random) -> Kernel | None:
        with self.lock:
            ready = [k for k in self.kernels if k.restarting_from is None and not k.lock.locked()]
        if not ready:
            return None
        kernel = rng.choice(ready)
        if not kernel.lock.acquire(blocking=False):
            return None
        if kernel.token is None and not self._refresh(kernel):
            kernel.lock.release()
            return None
        return kernel

    def _do_request(self, rng: random.Random) -> None:
        kernel = self._pick(rng)
        if kernel is None:
            return
        try:
            body = {"kernel_id": kernel.kernel_id, "count": rng.choice([1, 1, 2])}
            self._call(kernel, "POST", "dlinfra/api/allocations", body)
        finally:
            kernel.lock.release()

    def _do_release(self, rng: random.Random) -> None:
        kernel = self._pick(rng)
        if kernel is None:
            return
        try:
            status, body = self._call(kernel, "GET", "dlinfra/api/allocations")
            if status == 200:
                for alloc in body["allocations"]:
                    self._call(kernel, "DELETE", f"dlinfra/api/allocations/{alloc['id']}")
        finally:
            kernel.lock.release()

    def _do_read(self, rng: random.Random) -> None:
        server = rng.choice([self.victim, self.survivor])
        self._checked(server, "GET", rng.choice(["dlinfra/api/queue", "dlinfra/api/cluster"]))

    def _do_restart(self, rng: random.Random) -> None:
        """jupyter_server's restart (the Lab's button): the kernel's GPUs are released."""
        kernel = self._pick(rng)
        if kernel is None:
            return
        try:
            kernel.token = None
            self._checked(kernel.server, "POST", f"api/kernels/{kernel.kernel_id}/restart", {})
        finally:
            kernel.lock.release()

    def _do_gpu_restart(self, rng: random.Random) -> None:
        """``%gpu --restart``'s call: the kernel restarts with the GPUs it holds."""
        kernel = self._pick(rng)
        if kernel is None:
            return
        try:
            old = kernel.pid
            status, _ = self._call(
                kernel, "POST", f"dlinfra/api/kernels/{kernel.kernel_id}/restart"
            )
            if status == 202:
                kernel.restarting_from, kernel.token = old, None
        finally:
            kernel.lock.release()

    def _do_submit(self, rng: random.Random) -> None:
        with self.lock:
            self.tags += 1
            tag = f"job{self.tags}"
        body = {
            "path": "job.ipynb",
            "gpus": rng.choice([0, 1, 1]),
            "parameters": {"tag": tag, "hold": round(rng.uniform(0.1, 1.5), 2)},
        }
        status, created = self._checked(self.victim, "POST", "dlinfra/api/jobs", body)
        self.stats[f"submit {status}"] += 1
        if status == 201:
            with self.lock:
                self.submitted[created["id"]] = tag

    def _do_start_kernel(self, rng: random.Random) -> None:
        with self.lock:
            if sum(not k.survivor for k in self.kernels) >= 2:
                return
        kernel = self._start_kernel(self.victim)
        with self.lock:
            self.kernels.append(kernel)

    def _start_kernel(self, server: ServerProcess) -> Kernel:
        status, model = self._checked(server, "POST", "api/kernels", {"name": "python3"})
        if status != 201:
            raise OSError(f"no kernel: {status} {model}")
        return Kernel(server, model["id"], survivor=server is not self.victim)

    # -- talking to servers --------------------------------------------------------------------

    def _checked(
        self, server: ServerProcess, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        status, payload, _ = server.request(method, path, body, timeout=20)
        if status >= 500:
            self.server_errors.append(f"{method} {path}: {status} {payload}")
        return status, payload

    def _call(self, kernel: Kernel, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A call with the kernel's own token, as ``%gpu`` makes it."""
        data = {} if body is None and method == "POST" else body
        headers = {"Authorization": f"DLInfra-Kernel {kernel.token}"}
        status, payload, _ = kernel.server.request(method, path, data, headers=headers, timeout=20)
        if status in (401, 403):
            kernel.token = None  # restarted meanwhile: a new process, a new token
        elif status >= 500:
            self.server_errors.append(f"{method} {path}: {status} {payload}")
        return status, payload

    def _refresh(self, kernel: Kernel) -> bool:
        """The kernel's token and pid, read from its process (the token is in its environment)."""
        for proc in _kernel_procs(kernel.kernel_id):
            with contextlib.suppress(psutil.Error):
                env = proc.environ()
                if env.get("DLINFRA_KERNEL_ID") == kernel.kernel_id and env.get("DLINFRA_TOKEN"):
                    kernel.token, kernel.pid = env["DLINFRA_TOKEN"], proc.pid
                    return True
        return False

    def _kernel_processes(self, server: ServerProcess) -> list[psutil.Process]:
        """The server's kernels: its children now, and (after a crash) the orphans of its
        runtime directory; a job's kernel, whose parent is the job's runner, is not one."""
        assert server.proc is not None
        found = []
        with contextlib.suppress(psutil.Error):
            found = [p for p in psutil.Process(server.proc.pid).children() if _is_kernel(p, server)]
        for proc in psutil.process_iter():
            if proc not in found and _is_kernel(proc, server):
                with contextlib.suppress(psutil.Error):
                    parent = proc.parent()
                    if parent is None or RUNNER not in parent.cmdline():
                        found.append(proc)
        return found

    def _settle_restarts(self) -> None:
        """Wait for the survivor's asynchronous restarts to have their new process."""
        for kernel in self.kernels:
            if not kernel.survivor or kernel.restarting_from is None:
                continue

            def relaunched(k: Kernel = kernel) -> bool:
                record = self.ledger.kernel(k.kernel_id)
                return (
                    record.pid is not None
                    and record.pid != k.restarting_from
                    and pid_alive(record.pid, record.pid_started_at)
                )

            wait_until(relaunched, timeout=30, what=f"kernel {kernel.kernel_id} to restart")
            kernel.restarting_from = None
            kernel.token = None

    # -- the invariants ------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        # the survivor keeps changing the ledger between the two reads: a request it ends in
        # between is in the queue read and not the allocations read. Read again until they agree.
        deadline = time.monotonic() + 10
        while True:
            queue = [a.id for a in self.ledger.queue()]
            active = {a.id: a for a in self.ledger.allocations()}
            if set(queue) <= active.keys():
                return Snapshot(
                    queue=queue, active=active, jobs={j.id: j for j in self.book.jobs()}
                )
            assert time.monotonic() < deadline, f"the queue {queue} is not in {list(active)}"

    def _check(self, crash: Snapshot, where: str) -> None:
        survivors = {k.kernel_id for k in self.kernels}
        active = self.ledger.allocations()
        now = {a.id: a for a in active}
        kernels = {k.kernel_id: k for k in self.ledger.kernels()}

        # no GPU held twice, and the holdings table says the same as the grants
        granted = [a for a in active if a.state is AllocationState.GRANTED]
        held = Counter(g for a in granted for g in a.gpus)
        assert all(n == 1 for n in held.values()), f"{where}: a GPU is held twice: {granted}"
        holders = self.ledger.holders()
        assert {u: h.id for u, h in holders.items()} == {
            g: a.id for a in granted for g in a.gpus
        }, f"{where}: holdings and grants disagree"

        # every kernel that holds or waits lives: the restart's reconcile has run
        for alloc in active:
            record = kernels.get(alloc.kernel_id)
            assert record is not None, f"{where}: {alloc} belongs to no kernel"
            if record.kernel_name == JOB_KERNEL_NAME:
                continue  # below
            if record.pid is None:
                # a launch the crash cut short (a kernel is registered before its process
                # starts): the product counts it alive for the launch grace, then releases it
                launched = record.launched_at or record.created_at
                assert time.time() - launched < LAUNCH_GRACE_S + RECONCILE_S, f"{where}: {record}"
                self.stats["launch cut short"] += 1
                continue
            assert pid_alive(record.pid, record.pid_started_at), (
                f"{where}: {alloc} is held by kernel {record} whose process is gone"
            )
        # a job's end is recorded by the next pass of its server's job loop
        try:
            wait_until(lambda: not self._dead_job_holders(), timeout=15)
        except TimeoutError:
            raise AssertionError(f"{where}: {self._dead_job_holders()}") from None

        # the restarted server's own view agrees with the ledger
        def same_queue() -> bool:
            status, body = self._checked(self.victim, "GET", "dlinfra/api/queue")
            seen = [a["id"] for a in body["queue"]] if status == 200 else None
            return seen == [a.id for a in self.ledger.queue()]

        wait_until(same_queue, timeout=10, what=f"{where}: the restarted server's queue")

        # what was queued is still queued, in order, unless granted or its kernel died
        for aid in crash.queue:
            before = crash.active[aid]
            after = now.get(aid) or self.ledger.allocation(aid)
            if after.state.active:
                continue
            if before.kernel_id.startswith("job-"):
                job = self.book.job(int(before.kernel_id.removeprefix("job-")))
                assert not job.state.active, f"{where}: job {job} lost its place: {after}"
            else:
                assert before.kernel_id not in survivors, (
                    f"{where}: a live kernel lost its place in the queue: {after}"
                )
        still = [a.id for a in self.ledger.queue() if a.id in set(crash.queue)]
        assert still == [aid for aid in crash.queue if aid in set(still)], (
            f"{where}: the queue's order changed: {crash.queue} -> {still}"
        )
        # a live kernel's grant survives the crash untouched
        for aid, before in crash.active.items():
            if before.state is AllocationState.GRANTED and before.kernel_id in survivors:
                after = now.get(aid)
                assert after is not None and after.gpus == before.gpus, (
                    f"{where}: a live kernel's grant changed: {before} -> {after}"
                )

        # no job lost or run twice
        runs = Counter(self.runs.read_text().split())
        jobs = {j.id: j for j in self.book.jobs()}
        for job_id, tag in dict(self.submitted).items():
            job = jobs.get(job_id)
            assert job is not None, f"{where}: job {job_id} is lost"
            # nothing in the churn makes a job fail: only a crash could
            assert job.state not in (JobState.FAILED, JobState.CANCELLED), (
                f"{where}: {job}\n{self._log(job)}"
            )
            assert runs[tag] <= job.attempts + 1, f"{where}: {job} ran {runs[tag]} times"
        for job in jobs.values():
            tag = job.parameters.get("tag")
            assert runs[str(tag)] <= job.attempts + 1, f"{where}: {job} ran {runs[tag]} times"

    def _dead_job_holders(self) -> list[str]:
        """Jobs holding GPUs or a place in the queue that are over, or whose process is gone."""
        found = []
        kernels = {k.kernel_id: k for k in self.ledger.kernels()}
        live = {
            s["server_id"] for s in self.book.servers() if pid_alive(s["pid"], s["pid_started_at"])
        }
        for alloc in self.ledger.allocations():
            record = kernels.get(alloc.kernel_id)
            if record is None or record.kernel_name != JOB_KERNEL_NAME:
                continue
            job = self.book.job(int(alloc.kernel_id.removeprefix("job-")))
            if not job.state.active:
                found.append(f"ended {job} holds {alloc}")
            elif record.pid is not None:
                if not pid_alive(record.pid, record.pid_started_at):
                    found.append(f"{job} holds {alloc} but its process is gone")
            elif job.server_id not in live:
                found.append(f"{job} holds {alloc} but no live server watches it")
        return found

    def _log(self, job: Any) -> str:
        try:
            where = Path(job.workdir)
            log = (where / "job.log").read_text(errors="replace")[-3000:]
            kernel = (where / "kernel.log").read_text(errors="replace")[-2000:]
        except OSError as err:
            return f"(no log: {err})"
        return f"--- job.log ---\n{log}\n--- kernel.log ---\n{kernel}"


def _kernel_procs(kernel_id: str) -> list[psutil.Process]:
    """The processes of a kernel, newest first (a restart's old one may not have ended yet)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmd = proc.info["cmdline"] or []
        if any(f"kernel-{kernel_id}.json" in part for part in cmd) and _running(proc):
            found.append(proc)
    return sorted(found, key=lambda p: -float(p.info["create_time"] or 0))


def _is_kernel(proc: psutil.Process, server: ServerProcess) -> bool:
    runtime = str(server.workdir / "runtime")
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return "ipykernel_launcher" in cmd and any(part.startswith(runtime) for part in cmd)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
