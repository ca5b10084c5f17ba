"""Kernels as Kubernetes pods, on the team gateway: launch, ``%gpu``, and the cluster's word.

The pod provisioner (:mod:`..provisioning.pod_provisioner`) calls in here. A kernel first runs in
a pod without GPUs; ``%gpu N`` readies the kernel's next pod, asking ``nvidia.com/gpu: N``, and
the kernel keeps working meanwhile. Who decides when and where:

- **the ledger** (``admission``, the default): ``%gpu N`` is a request of the pool, granted on a
  node in the team's order (class, fair share, age; quotas, reservations, preemption of batch
  jobs) or queued with its place, reason and estimate, without a pod. Once granted, the next pod
  is created with a required node affinity on the granted node; the magic restarts the kernel,
  and the restart waits for that pod to be ready before it moves in. A GPU pod the cluster does
  not bind there within ``bind_timeout`` is deleted and its GPUs handed back to the queue
  (``Ledger.hand_back``: asked again at the same place, not on that node);
- **the cluster** (with Kueue, ``kueue_queue``): the request is recorded as the cluster's
  (``placement = "cluster"``) and the pod is created at once (within quotas: one over a quota
  waits here, without a pod). Every ``interval`` one list call reads every kernel pod: while the
  next pod is Pending, the request stays queued with kube-scheduler's own reason ("0/3 nodes are
  available: 3 Insufficient nvidia.com/gpu."); once it runs on a node, the request is granted
  on that node and the magic restarts the kernel into the pod (the restart adopts it).

A pod waiting for GPUs is never a launch timeout: only the GPU-less first pod is waited for at
launch, and any node can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_dlinfra.backends.base import BackendError
from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME
from jupyter_dlinfra.core.books.ledger import QUOTA_WAIT
from jupyter_dlinfra.core.errors import NotFound
from jupyter_dlinfra.core.models import POOL, Allocation, AllocationState
from jupyter_dlinfra.kube.kernel_pods import KernelPod, KernelPodSpec, PodLauncher
from jupyter_dlinfra.provisioning.pod_provisioner import client_env
from jupyter_dlinfra.provisioning.port import LaunchPlan
from jupyter_dlinfra.server.calls import LedgerCalls
from jupyter_dlinfra.server.launches import KernelLaunches
from jupyter_dlinfra.server.ledger_health import run_every
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetry

__all__ = ["BIND_TIMEOUT_S", "PodKernels"]

#: seconds an admitted GPU pod may stay unbound on its node before its GPUs go back to the queue
#: (below ``move_timeout``, so that a restart waiting for it may still move into the next one)
BIND_TIMEOUT_S = 45.0

_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def _connection(key: str) -> dict[str, Any]:
    """Ports for a new pod of a kernel, with the kernel's key. Ports free here are free in a
    pod's own network namespace too; picking them here also keeps pods apart where they share
    one (tests). Every pod of a kernel has the same key: clients connected through the restart
    into a GPU pod (the websocket's session) keep signing with it."""
    socks = []
    try:
        for _ in _PORTS:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        ports = {name: s.getsockname()[1] for name, s in zip(_PORTS, socks, strict=True)}
    finally:
        for s in socks:
            s.close()
    return {
        **ports,
        "key": key,
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
    }


@dataclass
class _Kernel:
    kernel_id: str
    user: str
    env: dict[str, str]
    key: str = field(default_factory=lambda: secrets.token_hex(32))
    generation: int = -1
    current: str | None = None
    connection: dict[str, Any] = field(default_factory=dict)
    #: the current pod was seen in a listing (before that, not being listed means nothing)
    seen: bool = False
    #: the pod readied for a GPU request, its connection and its allocation
    next: str | None = None
    next_connection: dict[str, Any] = field(default_factory=dict)
    next_allocation: int | None = None
    #: a kernel a previous gateway started, whose pod runs on: the kernel manager takes it back
    adopting: bool = False
    #: the kernel's GPU request that waits for a quota, without a pod yet
    held_back: int | None = None


def _creating(count: int) -> str:
    return f"creating a pod with {count} GPU{'s' if count != 1 else ''}"


class PodKernels:
    def __init__(
        self,
        *,
        calls: LedgerCalls,
        launches: KernelLaunches,
        cluster: ClusterTelemetry | None,
        launcher: PodLauncher,
        server_id: str,
        log: logging.Logger,
        interval: float,
        admission: bool = True,
        move_timeout: float = 90.0,
        bind_timeout: float = BIND_TIMEOUT_S,
    ) -> None:
        """``launches``: the ledger's side of a kernel's launch and end, which a pod's follows;
        ``cluster``: the GPUs' telemetry, which tells which GPUs a pod uses (when it knows);
        ``admission``: the ledger admits GPU pods (see the module); ``move_timeout``: how long
        a restart into an admitted pod waits for it to be ready before it starts without;
        ``bind_timeout``: how long an admitted GPU pod may stay unbound before its GPUs are
        handed back to the queue (asked again, not on that node)."""
        self.calls = calls
        self.ledger = calls.ledger
        self.launches = launches
        self.cluster = cluster
        self.server_id = server_id
        self.launcher = launcher
        self.log = log
        self.interval = interval
        self.admission = admission
        self.move_timeout = move_timeout
        self.bind_timeout = bind_timeout
        self._kernels: dict[str, _Kernel] = {}
        self._pods: dict[str, KernelPod] = {}
        self._task: asyncio.Task[None] | None = None
        self._adoption: asyncio.Task[None] | None = None

    def manages(self, kernel_id: str) -> bool:
        return kernel_id in self._kernels

    # -- the pod provisioner's port ------------------------------------------------------------

    async def pod_launching(
        self,
        *,
        kernel_id: str,
        kernel_name: str,
        path: str | None,
        owner: str | None,
        client_env: Mapping[str, str],
    ) -> LaunchPlan:
        known = self._kernels.get(kernel_id)
        if known is not None and known.adopting:
            return LaunchPlan(env=dict(known.env), summary=f"adopting its pod {known.current}")
        if self.admission and known is not None and known.next is not None:
            # restarting into the pod readied for its admitted GPUs: wait until it runs there
            await self._wait_ready(known)
        if known is not None and known.next is not None and self._ready(known.next):
            # moving into the pod readied for its GPUs: that pod already has the kernel's token
            return LaunchPlan(env=dict(known.env), summary=f"moving into pod {known.next}")
        plan = await self.launches.kernel_launching(
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            path=path,
            gpus=0,
            model=None,
            owner=owner,
        )
        # in a pod, the device plugin says which GPUs the kernel sees
        env = {**client_env, **{k: v for k, v in plan.env.items() if k != "CUDA_VISIBLE_DEVICES"}}
        waiting = known.held_back or known.next_allocation if known is not None else None
        if self.admission and waiting is not None:
            # restarted without the GPU pod it waited for: the magic in the new process
            # follows the request and moves the kernel once its pod can run
            env["DLINFRA_PENDING_ALLOCATION"] = str(waiting)
            env.setdefault(
                "DLINFRA_NOTICE",
                f"%gpu: this kernel restarted without its GPUs: its GPU pod was not ready in "
                f"{self.move_timeout:.0f} s. Request {waiting} goes on; the kernel moves into "
                "its pod before the first cell you run once it is granted and running.",
            )
        record = await self.calls.call(self.ledger.kernel, kernel_id)
        if known is None:
            self._kernels[kernel_id] = _Kernel(kernel_id=kernel_id, user=record.user, env=env)
        else:
            known.env = env
        return LaunchPlan(env=env, summary=plan.summary)

    async def start_pod(self, *, kernel_id: str, env: dict[str, str]) -> dict[str, object]:
        state = self._kernels[kernel_id]
        if state.adopting and state.current is not None:
            state.adopting = False
            pod = self._pods[state.current]
            self.log.info(
                "dlinfra: kernel %s of %s adopted in pod %s", kernel_id, state.user, pod.name
            )
            return self.launcher.connection_info(pod, state.connection)
        if state.next is not None and self._ready(state.next):
            state.current, state.connection, state.seen = state.next, state.next_connection, True
            state.next, state.next_connection, state.next_allocation = None, {}, None
            pod = self._pods[state.current]
            self.log.info("dlinfra: kernel %s moved into pod %s", kernel_id, pod.name)
            return self.launcher.connection_info(pod, state.connection)
        state.generation += 1
        state.connection = _connection(state.key)
        spec = KernelPodSpec(
            kernel_id=kernel_id,
            generation=state.generation,
            user=state.user,
            gpus=0,
            env=env,
            connection=state.connection,
        )
        name = await self.calls.call(self.launcher.create, spec)
        state.current, state.seen = name, False
        pod = await self.calls.call(self.launcher.wait_ready, name)
        self._pods[name] = pod
        state.seen = True
        return self.launcher.connection_info(pod, state.connection)

    async def _wait_ready(self, state: _Kernel) -> None:
        """Until the kernel's next pod is ready, is gone, or ``move_timeout`` passes (the pod
        listing every ``interval`` says which)."""
        deadline = asyncio.get_running_loop().time() + self.move_timeout
        while state.next is not None and not self._ready(state.next):
            if asyncio.get_running_loop().time() >= deadline:
                self.log.warning(
                    "dlinfra: pod %s of kernel %s was not ready within %.0f s; the kernel "
                    "restarts without it",
                    state.next,
                    state.kernel_id,
                    self.move_timeout,
                )
                return
            await asyncio.sleep(min(self.interval, 1.0))

    def pod_exit(self, kernel_id: str) -> int | None:
        state = self._kernels.get(kernel_id)
        if state is None or state.current is None:
            return 0
        pod = self._pods.get(state.current)
        if pod is None:
            return 1 if state.seen else None
        state.seen = True
        if pod.phase in ("Succeeded", "Failed"):
            return pod.exit_code if pod.exit_code is not None else int(pod.phase == "Failed")
        return None

    async def stop_pod(self, *, kernel_id: str, restart: bool, reason: str) -> None:
        state = self._kernels.get(kernel_id)
        if state is None:
            return
        if state.current is not None:
            name, state.current = state.current, None
            await self._delete(name)
        if restart:
            if state.next is None:
                # restarting into a pod without GPUs: the old pod's GPUs are given back
                await self.calls.mutate(self.ledger.release_kernel, kernel_id, reason=reason)
            return
        if state.next is not None:
            await self._delete(state.next)
        del self._kernels[kernel_id]
        await self.launches.kernel_stopped(kernel_id=kernel_id, restart=False, reason=reason)

    async def _delete(self, name: str) -> None:
        try:
            await self.calls.call(self.launcher.delete, name)
        except BackendError as err:
            self.log.warning("dlinfra: could not delete kernel pod %s: %s", name, err)
        self._pods.pop(name, None)

    # -- %gpu ------------------------------------------------------------------------------------

    async def request(
        self, *, kernel_id: str, count: int, model: str | None, priority_class: str | None
    ) -> Allocation:
        """Ask for ``count`` GPUs for a pod kernel and ready its next pod with them: once the
        ledger grants them (admission), or at once unless that would pass a quota (the
        cluster's placement: then the request waits here, without a pod, until it would not)."""
        state = self._kernels[kernel_id]
        if self.admission:
            alloc = await self.calls.mutate(
                self.ledger.request,
                kernel_id=kernel_id,
                count=count,
                model=model,
                priority_class=priority_class,
                anywhere=True,
            )
            if alloc.state is AllocationState.GRANTED and state.next is None:
                await self._create_gpu_pod(state, alloc)
            elif alloc.state is AllocationState.QUEUED:
                state.held_back = alloc.id
            return alloc
        blocked = await self._quota_block(state.user, count)
        alloc = await self.calls.mutate(
            self.ledger.request_placed,
            kernel_id=kernel_id,
            count=count,
            model=model,
            priority_class=priority_class,
            reason=QUOTA_WAIT + blocked if blocked else _creating(count),
        )
        if (
            alloc.state is not AllocationState.QUEUED
            or state.next is not None
            or state.held_back == alloc.id
        ):
            return alloc
        if blocked:
            state.held_back = alloc.id
            return alloc
        await self._create_gpu_pod(state, alloc)
        return alloc

    async def _quota_block(self, user: str, count: int) -> str | None:
        placed = [s.next_allocation for s in self._kernels.values() if s.next_allocation]
        found: str | None = await self.calls.call(
            self.ledger.cluster_quota_block, user, count, placed=placed
        )
        return found

    async def _create_gpu_pod(self, state: _Kernel, alloc: Allocation) -> None:
        state.generation += 1
        connection = _connection(state.key)
        spec = KernelPodSpec(
            kernel_id=state.kernel_id,
            generation=state.generation,
            user=state.user,
            gpus=alloc.count,
            model=alloc.model,
            priority_class=alloc.priority_class,
            env={**state.env, "DLINFRA_ALLOCATION": str(alloc.id)},
            connection=connection,
            # admitted: on the node the ledger granted (its GPUs there are counted as taken)
            node=alloc.node if alloc.placement == POOL else None,
        )
        try:
            name = await self.calls.call(self.launcher.create, spec)
        except BackendError as err:
            await self.calls.mutate(
                self.ledger.release, alloc.id, reason=f"no pod could be created: {err}"
            )
            raise
        state.next, state.next_connection, state.next_allocation = name, connection, alloc.id

    async def _admit_held_back(self) -> None:
        """Requests waiting without a pod, oldest first: a pod for each that may have one now
        (granted by the ledger; or, placed by the cluster, within quotas now)."""
        ledger = self.ledger
        waiting = sorted(
            (s for s in self._kernels.values() if s.held_back is not None),
            key=lambda s: s.held_back or 0,
        )
        for state in waiting:
            assert state.held_back is not None
            try:
                alloc = await self.calls.call(ledger.allocation, state.held_back)
            except NotFound:
                alloc = None
            if alloc is not None and alloc.placement == POOL:
                if alloc.state is not AllocationState.QUEUED or state.next:
                    state.held_back = None
                if alloc.state is AllocationState.GRANTED and state.next is None:
                    try:
                        await self._create_gpu_pod(state, alloc)
                    except BackendError as err:
                        self.log.warning(
                            "dlinfra: no GPU pod for kernel %s: %s", state.kernel_id, err
                        )
                continue
            if alloc is None or alloc.state is not AllocationState.QUEUED or state.next:
                state.held_back = None
                continue
            blocked = await self._quota_block(state.user, alloc.count)
            if blocked:
                await self.calls.mutate(ledger.note_placement, alloc.id, QUOTA_WAIT + blocked)
                continue
            state.held_back = None
            await self.calls.mutate(ledger.note_placement, alloc.id, _creating(alloc.count))
            try:
                await self._create_gpu_pod(state, alloc)
            except BackendError as err:
                self.log.warning("dlinfra: no GPU pod for kernel %s: %s", state.kernel_id, err)

    # -- watching the pods -----------------------------------------------------------------------

    def _ready(self, name: str) -> bool:
        pod = self._pods.get(name)
        return pod is not None and pod.ready

    def adopting(self, kernel_id: str) -> bool:
        """A kernel of a previous gateway that this one is taking back (alive meanwhile)."""
        state = self._kernels.get(kernel_id)
        return state is not None and state.adopting

    def start(self, kernel_manager: Any = None) -> None:
        self._task = asyncio.create_task(self._loop())
        if kernel_manager is not None and any(s.adopting for s in self._kernels.values()):
            self._adoption = asyncio.create_task(self._adopt(kernel_manager))

    def take_over(self) -> list[str]:
        """Blocking, at start-up: take back the kernels a previous gateway left running (a crash,
        an OOM kill, a lost node), and delete the pods and Secrets nobody can use any more.

        A kernel is taken back when the ledger still knows it and its newest running pod and
        that pod's Secret (its key) are there: it keeps its variables, its owner and the GPUs
        its pod holds. A GPU pod that was still waiting is deleted and its request released
        (ask again). Returns the ids of the kernels taken back; :meth:`start` then hands them
        to the kernel manager."""
        ledger = self.ledger
        pods = self.launcher.pods()
        records = {k.kernel_id: k for k in ledger.kernels()}
        by_kernel: dict[str, list[KernelPod]] = {}
        for pod in pods.values():
            by_kernel.setdefault(pod.kernel_id, []).append(pod)
        kept: list[str] = []
        for kernel_id, kernel_pods in sorted(by_kernel.items()):
            record = records.get(kernel_id)
            running = sorted((p for p in kernel_pods if p.ready), key=lambda p: p.generation)
            if record is None or record.kernel_name == JOB_KERNEL_NAME or not running:
                continue
            current = running[-1]
            try:
                found = self.launcher.kernel_of(current.name)
            except BackendError as err:
                self.log.warning("dlinfra: cannot read kernel pod %s: %s", current.name, err)
                continue
            if found is None:
                continue
            env, connection = found
            env.pop("DLINFRA_ALLOCATION", None)
            self._kernels[kernel_id] = _Kernel(
                kernel_id=kernel_id,
                user=record.user,
                env=env,
                key=str(connection["key"]),
                generation=max(p.generation for p in kernel_pods),
                current=current.name,
                connection=connection,
                seen=True,
                adopting=True,
            )
            self._pods[current.name] = current
            ledger.update_kernel(kernel_id, server_id=self.server_id)
            self._settle_requests(kernel_id, current)
            kept.append(current.name)
        gone = sorted(set(pods) - set(kept))
        for name in gone:
            try:
                self.launcher.delete(name)
            except BackendError as err:
                self.log.warning("dlinfra: could not delete orphaned pod %s: %s", name, err)
        try:
            stray = self.launcher.remove_secrets(keep=kept)
        except BackendError as err:
            self.log.warning("dlinfra: could not delete orphaned kernel Secrets: %s", err)
            stray = []
        for record in records.values():
            # a pod kernel of the previous gateway that is not coming back: free its GPUs now
            if (
                record.kernel_id not in self._kernels
                and record.kernel_name != JOB_KERNEL_NAME
                and record.pid is None
            ):
                ledger.forget_kernel(record.kernel_id, reason="its pod is gone (gateway restart)")
        adopted = sorted(self._kernels)
        if adopted or gone or stray:
            self.log.info(
                "dlinfra: a previous gateway's kernels: taking back %s; deleted pods %s and "
                "Secrets %s",
                adopted,
                gone,
                stray,
            )
        return adopted

    def _settle_requests(self, kernel_id: str, current: KernelPod) -> None:
        """The adopted kernel's requests: a grant stays if its pod holds GPUs; a request whose
        GPU pod was waiting (deleted now) is released."""
        ledger = self.ledger
        for alloc in ledger.allocations(kernel_id=kernel_id):
            if alloc.state is AllocationState.QUEUED:
                why = "the gateway restarted while the request waited: ask again with %gpu"
            elif alloc.state is AllocationState.GRANTED and current.gpus == 0:
                why = "the gateway restarted before the kernel moved into its GPU pod"
            else:
                continue
            ledger.release(alloc.id, reason=why)

    def leave_running(self, kernel_manager: Any) -> list[str]:
        """At a clean stop (``keep_kernel_pods_on_stop``): take the pod kernels out of the kernel
        manager without stopping them, so that its shutdown leaves their pods, Secrets and
        ledger records to the next gateway (:meth:`take_over`). Returns their ids."""
        kept: list[str] = []
        for kernel_id in list(kernel_manager.list_kernel_ids()):
            state = self._kernels.get(kernel_id)
            if state is None or state.current is None or state.adopting:
                continue
            kernel = kernel_manager.get_kernel(kernel_id)
            if getattr(kernel, "restarting", False):
                # its restart would go on in a manager nobody holds: shut it down instead
                continue
            # what shutting down would stop, except the kernel: watchers and the restarter
            with contextlib.suppress(Exception):
                kernel_manager.stop_watching_activity(kernel_id)
            with contextlib.suppress(Exception):
                kernel.stop_restarter()
            kernel_manager.remove_kernel(kernel_id)
            kernel_manager._kernel_connections.pop(kernel_id, None)
            del self._kernels[kernel_id]
            kept.append(kernel_id)
        return sorted(kept)

    async def _adopt(self, kernel_manager: Any) -> None:
        for state in [s for s in self._kernels.values() if s.adopting]:
            try:
                record = await self.calls.call(self.ledger.kernel, state.kernel_id)
                # the crashed gateway's connection file for this kernel, if the runtime
                # directory survived: jupyter_client would trust it over the pod's connection
                stale = Path(kernel_manager.connection_dir) / f"kernel-{state.kernel_id}.json"
                stale.unlink(missing_ok=True)
                await kernel_manager.start_kernel(
                    kernel_id=state.kernel_id,
                    kernel_name=record.kernel_name,
                    env=client_env(state.env),
                )
            except Exception:  # the kernel is lost, as before adoption existed; the rest go on
                self.log.exception("dlinfra: could not take back kernel %s", state.kernel_id)
                state.adopting = False
                await self.stop_pod(
                    kernel_id=state.kernel_id, restart=False, reason="not taken back at restart"
                )

    async def stop(self) -> None:
        if self._adoption is not None:
            self._adoption.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._adoption
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.calls.call(self.launcher.close)

    async def _loop(self) -> None:
        # a failing pass is logged and the next one tries again; a ledger database that is
        # away is said once and waited out with backoff
        await run_every(
            self.refresh,
            self.interval,
            name="reading the kernel pods",
            health=self.calls.health,
            log=self.log,
            at_once=True,
        )

    async def refresh(self) -> None:
        """One listing of every kernel pod; the ledger follows what the cluster says."""
        self._pods = await self.calls.call(self.launcher.pods)
        for state in list(self._kernels.values()):
            if state.current in self._pods:
                state.seen = True
            if state.next is None or state.next_allocation is None:
                continue
            await self._follow(state)
        await self._admit_held_back()

    async def _follow(self, state: _Kernel) -> None:
        assert state.next is not None and state.next_allocation is not None
        ledger = self.ledger
        pod = self._pods.get(state.next)
        aid = state.next_allocation
        try:
            alloc = await self.calls.call(ledger.allocation, aid)
        except NotFound:
            alloc = None
        if alloc is None or not alloc.state.active:
            # released or cancelled while it waited: the pod is not wanted any more
            name, state.next, state.next_allocation = state.next, None, None
            await self._delete(name)
            return
        if pod is None or pod.phase in ("Succeeded", "Failed") or pod.deleting:
            why = (pod.end_reason if pod is not None else None) or "its pod went away"
            state.next, state.next_allocation = None, None
            await self.calls.mutate(ledger.release, aid, reason=f"the GPU pod ended: {why}")
            return
        if pod.ready and pod.node:
            if alloc.state is AllocationState.QUEUED:
                await self.calls.mutate(
                    ledger.grant_placed, aid, node=pod.node, gpu_uuids=self._gpus_of(pod)
                )
            return
        if alloc.placement == POOL and alloc.state is AllocationState.GRANTED and not pod.node:
            await self._unbound(state, alloc, pod)
            return
        reason = pod.waiting_reason or "waiting for the cluster's scheduler"
        if await self.calls.call(ledger.note_placement, aid, reason):
            self.calls.events.poke()

    async def _unbound(self, state: _Kernel, alloc: Allocation, pod: KernelPod) -> None:
        """An admitted GPU pod the cluster has not bound on its node: after ``bind_timeout``
        it is deleted and its GPUs handed back (asked again at the same place, not on that
        node); a new pod is made wherever the ledger grants them next."""
        waited = self.ledger.clock.now() - (alloc.granted_at or alloc.created_at)
        if waited < self.bind_timeout:
            return
        why = pod.waiting_reason or "not scheduled"
        self.log.warning(
            "dlinfra: GPU pod %s of kernel %s was not placed on %s in %.0f s (%s); its GPUs go "
            "back to the queue",
            pod.name,
            state.kernel_id,
            alloc.node,
            waited,
            why,
        )
        again = await self.calls.mutate(
            self.ledger.hand_back,
            alloc.id,
            reason=f"kubernetes did not place its pod on {alloc.node} in {waited:.0f} s: {why}",
        )
        # the old pod stays the kernel's next one until there is another (a restart waiting
        # for it must not start without GPUs in between)
        if again.state is AllocationState.GRANTED:
            try:
                await self._create_gpu_pod(state, again)
            except BackendError as err:
                self.log.warning("dlinfra: no GPU pod for kernel %s: %s", state.kernel_id, err)
                state.next, state.next_allocation = None, None
        else:
            state.next, state.next_allocation = None, None
            if again.state is AllocationState.QUEUED:
                state.held_back = again.id
        await self._delete(pod.name)

    def _gpus_of(self, pod: KernelPod) -> list[str]:
        """The GPUs DCGM says the pod uses, when the cluster's telemetry knows."""
        holders = getattr(self.cluster, "holders", None)
        if holders is None:
            return []
        try:
            found = holders()
        except Exception:  # telemetry is a nicety here: the ledger picks free GPUs
            return []
        return [uuid for uuid, ref in found.items() if ref.pod == pod.name]
