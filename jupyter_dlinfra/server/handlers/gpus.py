"""The GPU handlers under ``/dlinfra/api``: the cluster, allocations, the queue, kernel restarts,
the event stream and metrics. Thin: each one parses, calls the service, renders a view."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from tornado.iostream import StreamClosedError

from jupyter_dlinfra.backends.base import BackendError
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import Allocation, AllocationState, Gpu
from jupyter_dlinfra.server.allocation_waits import allocation_waits, read_versioned
from jupyter_dlinfra.server.errors import ApiError
from jupyter_dlinfra.server.events import Subscription
from jupyter_dlinfra.server.handlers.base import DLInfraHandler, authorized
from jupyter_dlinfra.server.parsing import (
    MAX_COUNT,
    MAX_ID,
    json_field_int,
    json_field_name,
    kernel_id_of,
    path_id,
    query_int,
    query_name,
    query_number,
    shown,
)
from jupyter_dlinfra.server.restarts import restart_soon
from jupyter_dlinfra.server.service import GpuService
from jupyter_dlinfra.server.views import allocation_json, cluster_json, outside_by_gpu, shown_gpus
from jupyter_dlinfra.telemetry import GpuSample

__all__ = [
    "ALLOCATIONS_LIMIT",
    "MAX_ALLOCATIONS_LIMIT",
    "MAX_QUEUE_LIMIT",
    "MAX_WAIT_S",
    "QUEUE_LIMIT",
    "AllocationHandler",
    "AllocationsHandler",
    "ClusterHandler",
    "EventsHandler",
    "KernelRestartHandler",
    "MetricsHandler",
    "QueueHandler",
]

MAX_WAIT_S = 60.0
#: waiting requests ``GET queue`` lists when the caller names no ``limit``, and the most it lists
QUEUE_LIMIT = 100
MAX_QUEUE_LIMIT = 1000
#: allocations GET allocations lists unless told (and at most): a page, like the queue's
ALLOCATIONS_LIMIT = 100
MAX_ALLOCATIONS_LIMIT = 1000


def gpu_index(ledger: Ledger, allocations: Iterable[Allocation]) -> dict[str, Gpu]:
    """The GPUs that the views of ``allocations`` show, by UUID: none for waiting requests,
    never the whole cluster's."""
    uuids = shown_gpus(allocations)
    if not uuids:
        return {}
    return {g.uuid: g for g in ledger.gpus_of(uuids)}


def _page_with_gpus(ledger: Ledger, **filters: Any) -> tuple[list[Allocation], int, dict[str, Gpu]]:
    """A page of allocations and the GPUs its views show, in one trip to the ledger's threads
    (each trip is a hand-over between the event loop and a thread, twice)."""
    found, total = ledger.allocations_page(**filters)
    return found, total, gpu_index(ledger, found)


def _allocation_with_gpus(ledger: Ledger, aid: int) -> tuple[Allocation, dict[str, Gpu]]:
    alloc = ledger.allocation(aid)
    return alloc, gpu_index(ledger, [alloc])


class _Base(DLInfraHandler):
    async def gpu_index_for(self, allocations: Iterable[Allocation]) -> dict[str, Gpu]:
        """:func:`gpu_index`, on the ledger's threads."""
        if not shown_gpus(allocations):
            return {}
        return await self.service.call(gpu_index, self.service.ledger, allocations)

    def kept_gpu_index(self, allocations: Iterable[Allocation]) -> dict[str, Gpu] | None:
        """:func:`gpu_index` from the ledger's memory, on the event loop; None where it would
        read the database."""
        uuids = shown_gpus(allocations)
        if not uuids:
            return {}
        found = self.service.ledger.kept_gpus(uuids)
        return None if found is None else {g.uuid: g for g in found}

    def page_query(self, default: int, most: int) -> tuple[int, int]:
        """``?limit=`` (``default`` unless given, at most ``most``) and ``?offset=``."""
        limit = query_int(
            self.get_query_argument("limit", str(default)), "limit", minimum=0, maximum=most
        )
        offset = query_int(
            self.get_query_argument("offset", "0"), "offset", minimum=0, maximum=MAX_ID
        )
        return limit, offset

    def answer_page(
        self, key: str, listed: list[dict[str, Any]], *, total: int, offset: int, limit: int
    ) -> None:
        """A page under ``key``, with where the next one starts (null after the last)."""
        end = offset + len(listed)
        self.answer(
            {
                key: listed,
                "total": total,
                "offset": offset,
                "limit": limit,
                "next_offset": end if listed and end < total else None,
            }
        )

    def view(
        self,
        alloc: Allocation,
        gpus: dict[str, Gpu],
        samples: Mapping[str, GpuSample] | None = None,
    ) -> dict[str, Any]:
        return allocation_json(alloc, gpus, samples, simulated=self.service.provider.simulated)


class ClusterHandler(_Base):
    @authorized("read")
    async def get(self) -> None:
        ledger = self.service.ledger
        gpus = await self.service.call(ledger.gpus)
        holders = await self.service.call(ledger.holders)
        parked = await self.service.call(ledger.parked)
        # the holders' kernels only: those waiting would make the answer grow with the queue
        kernels = await self.service.call(
            ledger.kernels_by_id,
            {a.kernel_id for a in holders.values()} | {a.kernel_id for a in parked.values()},
        )
        queue_length = await self.service.call(ledger.queue_length)
        outside = await self.service.call(ledger.outside)
        self.answer(
            cluster_json(
                gpus=gpus,
                holders=holders,
                kernels={k.kernel_id: k for k in kernels},
                samples=self.service.samples,
                provider=self.service.provider,
                local_node=self.service.settings.node,
                queue_length=queue_length,
                outside=outside_by_gpu(outside),
                parked=parked,
            )
        )


class AllocationsHandler(_Base):
    @authorized("read")
    async def get(self) -> None:
        kernel_id = query_name(self.get_query_argument("kernel_id", None), "kernel_id")
        if self.kernel_scope is not None:
            if kernel_id not in (None, self.kernel_scope):
                raise ApiError(403, "a kernel's token acts only for that kernel", code="forbidden")
            kernel_id = self.kernel_scope
        state = self.get_query_argument("state", "active")
        if state not in ("active", "all", "granted"):
            raise ApiError(400, "state must be 'active', 'granted' or 'all'", code="bad_query")
        user = query_name(self.get_query_argument("user", None), "user")
        limit, offset = self.page_query(ALLOCATIONS_LIMIT, MAX_ALLOCATIONS_LIMIT)
        ledger = self.service.ledger
        # "granted": nothing of the queue read or explained
        filters: dict[str, Any] = {
            "kernel_id": kernel_id,
            "user": user,
            "active": state != "all",
            "state": AllocationState.GRANTED if state == "granted" else None,
        }
        kept = None
        if kernel_id is None and user is not None and state == "active":
            # a sidebar's own list: from memory on the event loop when nothing is missing
            kept = await self.service.from_memory(
                functools.partial(ledger.kept_users_page, user, limit=limit, offset=offset)
            )
        kept_gpus = None if kept is None else self.kept_gpu_index(kept[0])
        if kept is not None and kept_gpus is not None:
            (found, total), gpus = kept, kept_gpus
        else:
            found, total, gpus = await self.service.call(
                _page_with_gpus, ledger, **filters, limit=limit, offset=offset
            )
        listed = [self.view(a, gpus, self.service.samples) for a in found]
        self.answer_page("allocations", listed, total=total, offset=offset, limit=limit)

    @authorized("write")
    async def post(self) -> None:
        body = self.json_body()
        unknown = set(body) - {"kernel_id", "count", "model", "priority_class"}
        if unknown:
            raise ApiError(
                400,
                f"unknown field(s): {shown(', '.join(sorted(unknown)))}; expected kernel_id, "
                "count, model and priority_class",
                code="bad_field",
            )
        kernel_id = body.get("kernel_id", self.kernel_scope)
        if kernel_id is None:
            raise ApiError(400, "kernel_id (a string) is required", code="bad_field")
        kernel_id = kernel_id_of(kernel_id, where="kernel_id")
        if body.get("count") is None:
            raise ApiError(400, "count must be a whole number of GPUs, such as 2", code="bad_field")
        # the ledger says why a count under 1 is no request ("invalid"); here, only its size
        count = json_field_int(body, "count", minimum=-MAX_COUNT, maximum=MAX_COUNT, example="2")
        assert count is not None
        model = json_field_name(body, "model", what="a GPU model, such as 'A100'")
        klass = json_field_name(body, "priority_class", what="a class name, such as 'batch'")
        caller = self.kernel_caller
        if caller is not None and caller.kernel_id == kernel_id:
            owner = caller.user
        else:
            # a person asking for a kernel (a kernel's token was checked with its record)
            owner = (await self.service.call(self.service.ledger.kernel, kernel_id)).user
        self.own_kernel(kernel_id, owner)
        pods = self.settings.get("dlinfra_pod_kernels")
        if pods is not None and pods.manages(kernel_id):
            # a pod kernel: the cluster places its GPUs, in a new pod
            try:
                alloc = await pods.request(
                    kernel_id=kernel_id, count=count, model=model, priority_class=klass
                )
            except BackendError as err:
                raise ApiError(
                    502, f"Kubernetes refused the pod: {err}", code="backend_error"
                ) from None
        else:
            alloc = await self.service.change(
                self.service.ledger.request_change(
                    kernel_id=kernel_id, count=count, model=model, priority_class=klass
                )
            )
        self.set_header(
            "Location", self.base_url.rstrip("/") + f"/dlinfra/api/allocations/{alloc.id}"
        )
        self.answer(self.view(alloc, await self.gpu_index_for([alloc])), status=201)


class AllocationHandler(_Base):
    @authorized("read")
    async def get(self, allocation_id: str) -> None:
        aid = path_id(allocation_id, "allocation")
        wait = query_number(
            self.get_query_argument("wait", "0"), "wait", minimum=0, maximum=MAX_WAIT_S, unit=" s"
        )
        ledger = self.service.ledger
        version = None
        gpus: dict[str, Gpu] | None = None
        kept = None
        if not wait:
            kept = await self.service.from_memory(functools.partial(ledger.kept_allocation, aid))
        if kept is not None:
            # the check before each cell of a waiting %gpu: from memory, on the event loop
            alloc, gpus = kept, self.kept_gpu_index([kept])
        elif wait:
            kept_now = await self.service.from_memory(
                functools.partial(ledger.kept_versioned, (aid,))
            )
            if kept_now is not None and aid in kept_now[1]:
                version, alloc = kept_now[0], kept_now[1][aid]
            else:
                version, alloc = await self.service.call(read_versioned, ledger, aid)
        else:
            alloc, gpus = await self.service.call(_allocation_with_gpus, ledger, aid)
        if self.kernel_scope is not None and alloc.kernel_id != self.kernel_scope:
            raise ApiError(403, "a kernel's token acts only for that kernel", code="forbidden")
        if version is not None and alloc.state is AllocationState.QUEUED:
            # one watcher reads the waiting requests again, when the ledger has changed
            waits = allocation_waits(self.service)
            alloc = await waits.until_changed(alloc, version=version, timeout=wait)
        if gpus is None:
            gpus = await self.gpu_index_for([alloc])
        self.answer(self.view(alloc, gpus, self.service.samples))

    @authorized("write")
    async def delete(self, allocation_id: str) -> None:
        aid = path_id(allocation_id, "allocation")
        ledger = self.service.ledger

        def may_release(alloc: Allocation) -> None:
            self.own_kernel(alloc.kernel_id, alloc.user)
            if alloc.kernel_id.startswith("job-"):
                raise ApiError(
                    409,
                    f"allocation {aid} holds the GPUs of {alloc.kernel_id.replace('-', ' ')}: "
                    "cancel the job to free them (DELETE /dlinfra/api/jobs/ID)",
                    code="job_allocation",
                )
            if alloc.state.active and alloc.park_state is not None:
                # its process's GPU state waits in host memory for these GPUs: without them
                # the kernel's next CUDA call would wait for ever
                raise ApiError(
                    409,
                    f"allocation {aid} is {alloc.park_state}: its kernel's GPU memory waits in "
                    "host memory. Resume it first (run a cell, or POST "
                    f"/dlinfra/api/kernels/{alloc.kernel_id}/resume), or shut the kernel down",
                    code="parked",
                )

        who = "its kernel" if self.kernel_scope else "the user"
        # checked on the row the release reads, in its transaction: one trip, and no change
        # between the check and the release
        await self.service.change(
            ledger.release_change(aid, reason=f"released by {who}", check=may_release)
        )
        self.set_status(204)
        self.finish()


class QueueHandler(_Base):
    """A page of the waiting requests, in the order of service, with how many wait in all."""

    @authorized("read")
    async def get(self) -> None:
        limit, offset = self.page_query(QUEUE_LIMIT, MAX_QUEUE_LIMIT)
        node = query_name(self.get_query_argument("node", None), "node")
        ledger = self.service.ledger
        kept = await self.service.from_memory(
            functools.partial(ledger.kept_queue_page, node, limit=limit, offset=offset)
        )
        if kept is not None:
            queued, total = kept
        else:
            queued, total = await self.service.call(
                ledger.queue_page, node, limit=limit, offset=offset
            )
        gpus = await self.gpu_index_for(queued)
        listed = [self.view(a, gpus) for a in queued]
        self.answer_page("queue", listed, total=total, offset=offset, limit=limit)


class KernelRestartHandler(_Base):
    """Restart a kernel so that its GPUs apply at launch (CUDA was initialised too early)."""

    @authorized("write")
    async def post(self, kernel_id: str) -> None:
        kernel_id = kernel_id_of(kernel_id)
        if self.json_body():
            raise ApiError(400, "a restart takes no fields: send {}", code="bad_field")
        record = await self.service.call(self.service.ledger.kernel, kernel_id)
        self.own_kernel(kernel_id, record.user)
        km: Any = self.kernel_manager
        if kernel_id not in km:
            raise ApiError(404, f"kernel {kernel_id} does not run in this server", code="no_kernel")
        held = await self.service.call(self.service.ledger.allocations, kernel_id=kernel_id)
        granted = [a for a in held if a.state is AllocationState.GRANTED]
        gpus = await self.gpu_index_for(granted)
        # answer first: the caller may be the kernel that is about to be restarted
        self.answer(
            {
                "kernel_id": kernel_id,
                "restarting": True,
                "keeps": [self.view(a, gpus) for a in granted],
            },
            status=202,
        )
        restart_soon(km, kernel_id, prepare=functools.partial(_keep_gpus, self.service, kernel_id))


async def _keep_gpus(service: GpuService, kernel_id: str) -> None:
    """Right before the restart: the GPUs the kernel holds then are carried over it (set any
    earlier, another restart of the kernel could take the mark and leave this one without)."""
    held = await service.call(service.ledger.allocations, kernel_id=kernel_id)
    if any(a.state is AllocationState.GRANTED for a in held):
        await service.mutate(service.ledger.update_kernel, kernel_id, keep_on_restart=True)


class EventsHandler(_Base):
    """Server-sent events: a whole snapshot of the ledger (its queue by the first page), then a
    delta per change, and notices.

    Each frame is built once by the service's broadcaster and written as is to every
    subscriber; this handler only copies bytes from its subscription to its socket (and asks
    for a whole snapshot again when the subscriber fell so far behind that deltas were dropped).
    While it waits for frames, the broadcaster writes each one straight to its connection
    (:meth:`_write_through`): a delta reaches 500 streams without waking 500 coroutines.
    """

    # an open dashboard is not activity: it must not keep an idle server from being culled
    _track_activity = False
    _subscription: Subscription | None = None
    _gone = False

    @authorized("read")
    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        broadcaster = self.service.events
        sub = self._subscription = await broadcaster.subscribe(user=self.person())
        try:
            if self._gone:
                return
            # an EventSource that loses the connection tries again after this long (ms)
            self.write(b"retry: 3000\n\n")
            await self.flush()  # the headers go first: frames may then be written through
            # an output transform (compress_response) must see every byte: no writing around it
            sink = None if self.application.transforms else self._write_through
            while True:
                if sub.resync:  # fell behind: the latest whole snapshot, then deltas again
                    await broadcaster.resync(sub)
                frames = await sub.next(broadcaster.keepalive, sink=sink)
                if frames is None:
                    break
                for frame in frames:
                    self.write(frame)
                await self.flush()
        except StreamClosedError:
            self._gone = True
        finally:
            broadcaster.unsubscribe(sub)
        if not self._gone:
            # the server is stopping: end the response so that the client sees a clean close
            with contextlib.suppress(StreamClosedError):
                self.finish()

    def _write_through(self, frame: bytes) -> bool:
        """Write ``frame`` to the connection now; False when it cannot take it now: it is
        closed, or still sends what was written before (a slow reader, whose frames then queue
        within the subscription's bound, and whose handler writes them when it can)."""
        connection = self.request.connection
        stream = getattr(connection, "stream", None)
        if connection is None or stream is None or stream.closed() or stream.writing():
            return False
        # nothing waits for it: the next frame goes through only once this one is sent
        connection.write(frame)
        return True

    def on_connection_close(self) -> None:
        self._gone = True
        if self._subscription is not None:
            self.service.events.unsubscribe(self._subscription)
        super().on_connection_close()


class MetricsHandler(_Base):
    """Prometheus text exposition of this server's view of the ledger and telemetry."""

    _track_activity = False

    @authorized("read")
    async def get(self) -> None:
        registry: CollectorRegistry = self.settings["dlinfra_metrics_registry"]
        await self.service.events.current()
        body = await self.service.call(generate_latest, registry)
        self.set_status(200)
        self.finish(body, set_content_type=CONTENT_TYPE_LATEST)
