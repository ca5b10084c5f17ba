"""Before parking, the server asks the kernel to ready its GPU memory and to say what stops it.

``prepare()`` is checked here in this process against a stand-in PyTorch (and stand-ins for the
other libraries it looks at), one case per blocker; ``probe_for_parking`` against a real
ipykernel kernel under the kernel manager class the server installs, with the same stand-in
PyTorch sent into the kernel as source.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from jupyter_dlinfra.kernel import parking
from jupyter_dlinfra.server.kernel_probe import ProbeResult, probe_for_parking
from jupyter_dlinfra.server.restarts import SerialRestartMappingKernelManager

GIB = 1 << 30


def fake_torch(
    *,
    initialised: bool = True,
    reserved: tuple[int, ...] = (3 << 30, 0),
    cached: tuple[int, ...] = (1 << 30, 0),
    backend: str | None = None,
    group_backends: tuple[str, ...] = (),
    shared: tuple[tuple[str, bool], ...] = (),
) -> dict[str, types.ModuleType]:
    """Modules for ``sys.modules`` that act as much of PyTorch as parking reads: ``reserved`` and
    ``cached`` bytes by device (empty_cache frees the cached part), a default process group on
    ``backend`` (None: not initialised) and subgroups, and ``shared`` storages of
    torch.multiprocessing as (device type, alive). What parking calls is kept in
    ``torch.calls``; ``torch.state`` can be changed afterwards.

    Self-contained, so that its source can be run inside a kernel too.
    """
    import types

    calls: list[str] = []
    state: dict[str, Any] = {
        "initialised": initialised,
        "reserved": list(reserved),
        "cached": list(cached),
        "backend": backend,
    }

    def empty_cache() -> None:
        calls.append("empty_cache")
        state["reserved"] = [r - c for r, c in zip(state["reserved"], state["cached"], strict=True)]
        state["cached"] = [0] * len(state["cached"])

    def synchronize(device: int | None = None) -> None:
        calls.append(f"synchronize:{device}")

    cuda = types.ModuleType("torch.cuda")
    cuda.__dict__.update(
        is_initialized=lambda: state["initialised"],
        device_count=lambda: len(state["reserved"]),
        current_device=lambda: 0,
        memory_reserved=lambda device=None: state["reserved"][device or 0],
        synchronize=synchronize,
        empty_cache=empty_cache,
    )
    world = types.SimpleNamespace(
        pg_map={object(): (name, None) for name in group_backends},
    )
    c10d = types.ModuleType("torch.distributed.distributed_c10d")
    c10d.__dict__.update(_world=world)
    distributed = types.ModuleType("torch.distributed")
    distributed.__dict__.update(
        is_initialized=lambda: state["backend"] is not None,
        get_backend=lambda group=None: state["backend"],
        distributed_c10d=c10d,
    )

    class Ref:
        def __init__(self, alive: bool) -> None:
            self.alive = alive

        def expired(self) -> bool:
            return not self.alive

    storages = {
        f"handle-{i}": types.SimpleNamespace(device=types.SimpleNamespace(type=device))
        for i, (device, _) in enumerate(shared)
    }
    reductions = types.ModuleType("torch.multiprocessing.reductions")
    reductions.__dict__.update(
        shared_cache={f"handle-{i}": Ref(alive) for i, (_, alive) in enumerate(shared)},
        storage_from_cache=lambda cls, key: storages.get(key),
    )
    torch = types.ModuleType("torch")
    torch.__dict__.update(
        cuda=cuda, distributed=distributed, UntypedStorage=object, calls=calls, state=state
    )
    return {
        "torch": torch,
        "torch.cuda": cuda,
        "torch.distributed": distributed,
        "torch.distributed.distributed_c10d": c10d,
        "torch.multiprocessing.reductions": reductions,
    }


@pytest.fixture
def no_frameworks(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process as a kernel without PyTorch, cupy or rmm, whatever the test run imported."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("torch", "cupy", "rmm"):
            monkeypatch.delitem(sys.modules, name)
    # the test process has no CUDA: /proc/self/maps must not say otherwise
    monkeypatch.setattr(parking, "cuda_initialised", lambda: None)
    return monkeypatch


def _with(patch: pytest.MonkeyPatch, modules: dict[str, types.ModuleType]) -> Any:
    for name, module in modules.items():
        patch.setitem(sys.modules, name, module)
    return modules.get("torch")


# -- prepare(), in this process ------------------------------------------------------------------


def test_without_torch_there_is_nothing_to_do(no_frameworks: pytest.MonkeyPatch) -> None:
    report = parking.prepare()
    assert report == {
        "pid": os.getpid(),
        "torch": False,
        "cuda_initialised": False,
        "reserved_bytes": 0,
        "freed_bytes": 0,
        "blockers": [],
    }
    assert json.loads(parking.prepare_json()) == report


def test_torch_without_cuda_is_left_alone(no_frameworks: pytest.MonkeyPatch) -> None:
    torch = _with(no_frameworks, fake_torch(initialised=False))
    report = parking.prepare()
    assert report["torch"] is True
    assert (report["reserved_bytes"], report["freed_bytes"], report["blockers"]) == (0, 0, [])
    assert torch.calls == []


def test_the_cache_is_freed_after_the_devices_in_use_finish(
    no_frameworks: pytest.MonkeyPatch,
) -> None:
    torch = _with(no_frameworks, fake_torch(reserved=(3 * GIB, 0, GIB), cached=(GIB, 0, 0)))
    no_frameworks.setattr(parking, "cuda_initialised", lambda: "PyTorch has initialised CUDA")
    report = parking.prepare()
    assert report["blockers"] == []
    assert report["cuda_initialised"] is True
    assert (report["reserved_bytes"], report["freed_bytes"]) == (3 * GIB, GIB)
    # device 1 holds nothing: synchronising it would make a context there
    assert torch.calls == ["synchronize:0", "synchronize:2", "empty_cache"]


@pytest.mark.parametrize(
    ("backend", "groups"),
    [("nccl", ()), ("cpu:gloo,cuda:nccl", ()), ("gloo", ("gloo", "nccl"))],
    ids=["default-group", "per-device-backends", "a-subgroup"],
)
def test_nccl_blocks_parking_and_the_kernel_is_left_as_it_is(
    no_frameworks: pytest.MonkeyPatch, backend: str, groups: tuple[str, ...]
) -> None:
    torch = _with(no_frameworks, fake_torch(backend=backend, group_backends=groups))
    report = parking.prepare()
    [blocker] = report["blockers"]
    assert blocker.startswith("NCCL communicators are open (torch.distributed, backend ")
    assert "torch.distributed.destroy_process_group()" in blocker
    # a synchronize could wait for ever on a collective: what is reserved is only read
    assert torch.calls == []
    assert (report["reserved_bytes"], report["freed_bytes"]) == (3 * GIB, 0)


def test_gloo_alone_does_not_block(no_frameworks: pytest.MonkeyPatch) -> None:
    _with(no_frameworks, fake_torch(backend="gloo", group_backends=("gloo",)))
    assert parking.prepare()["blockers"] == []


def test_live_cuda_storages_shared_between_processes_block(
    no_frameworks: pytest.MonkeyPatch,
) -> None:
    shared = (("cuda", True), ("cuda", True), ("cuda", False), ("cpu", True))
    _with(no_frameworks, fake_torch(shared=shared))
    [blocker] = parking.prepare()["blockers"]
    assert "CUDA IPC, 2 storages" in blocker
    assert "torch.cuda.ipc_collect()" in blocker


def test_storages_shared_through_host_memory_do_not_block(
    no_frameworks: pytest.MonkeyPatch,
) -> None:
    # what DataLoader workers send: CPU storages, and CUDA ones already freed
    _with(no_frameworks, fake_torch(shared=(("cpu", True), ("cuda", False))))
    assert parking.prepare()["blockers"] == []


def test_a_cupy_communicator_in_the_notebook_blocks(no_frameworks: pytest.MonkeyPatch) -> None:
    nccl = types.ModuleType("cupy.cuda.nccl")

    class NcclCommunicator:
        pass

    nccl.__dict__.update(NcclCommunicator=NcclCommunicator)
    no_frameworks.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    main = sys.modules["__main__"]
    no_frameworks.setattr(main, "comm", NcclCommunicator(), raising=False)
    no_frameworks.setattr(
        main, "backend", types.SimpleNamespace(_comm=NcclCommunicator()), raising=False
    )
    [blocker] = parking.prepare()["blockers"]
    assert blocker.startswith("NCCL communicators are open (cupy.cuda.nccl, held by ")
    assert "backend, comm" in blocker


@pytest.mark.parametrize("managed_below", [True, False])
def test_rmm_managed_memory_blocks(no_frameworks: pytest.MonkeyPatch, managed_below: bool) -> None:
    mr = types.ModuleType("rmm.mr")

    class ManagedMemoryResource:
        pass

    class CudaMemoryResource:
        pass

    bottom = ManagedMemoryResource() if managed_below else CudaMemoryResource()
    pool = types.SimpleNamespace(upstream_mr=bottom)
    mr.__dict__.update(
        ManagedMemoryResource=ManagedMemoryResource, get_current_device_resource=lambda: pool
    )
    no_frameworks.setitem(sys.modules, "rmm.mr", mr)
    no_frameworks.setattr(parking, "cuda_initialised", lambda: "libcuda is loaded")
    blockers = parking.prepare()["blockers"]
    if managed_below:
        [blocker] = blockers
        assert blocker.startswith("managed (unified) memory is in use (rmm")
    else:
        assert blockers == []


def test_what_cannot_be_checked_blocks_and_the_rest_is_still_checked(
    no_frameworks: pytest.MonkeyPatch,
) -> None:
    modules = fake_torch(backend="nccl")

    def broken() -> bool:
        raise RuntimeError("the store is unreachable")

    no_frameworks.setattr(modules["torch.multiprocessing.reductions"], "shared_cache", {"k": 1})
    modules["torch.distributed"].__dict__["is_initialized"] = broken
    _with(no_frameworks, modules)
    blockers = parking.prepare()["blockers"]
    assert blockers == [
        "could not check this kernel for parking: RuntimeError: the store is unreachable",
        "could not check this kernel for parking: AttributeError: 'int' object has no "
        "attribute 'expired'",
    ]


def test_prepare_never_raises(no_frameworks: pytest.MonkeyPatch) -> None:
    torch = _with(no_frameworks, fake_torch())

    def lost() -> int:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    torch.cuda.__dict__["device_count"] = lost
    report = json.loads(parking.prepare_json())
    assert report["blockers"] == [
        "could not check this kernel for parking: RuntimeError: CUDA error: an illegal memory "
        "access was encountered"
    ]
    assert report["pid"] == os.getpid()

    def broken() -> str | None:
        raise OSError("no /proc")

    no_frameworks.setattr(parking, "cuda_initialised", broken)
    assert parking.prepare()["blockers"] == [
        "could not check this kernel for parking: OSError: no /proc"
    ]


# -- probe_for_parking(), against a real kernel ---------------------------------------------------


class Kernel:
    """One ipykernel kernel under the server's kernel manager class, shared by this module."""

    def __init__(self, km: Any, kernel_id: str) -> None:
        self.km = km
        self.id = kernel_id

    @property
    def pid(self) -> int:
        return int(self.km.get_kernel(self.id).provisioner.pid)

    def send(
        self, code: str = "", expressions: dict[str, str] | None = None, *, own_id: bool = True
    ) -> tuple[Any, str]:
        """A silent request; returns (client, msg_id). The client has a session id of its own
        unless ``own_id`` is False: then it has the manager's, as ``kernel.client()`` gives."""
        kernel = self.km.get_kernel(self.id)
        session = kernel.session.clone()
        if own_id:
            # the kernel routes replies by session id: a shared one would lose them
            session.session = str(uuid.uuid4())
        client = kernel.client(session=session)
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        msg_id = client.execute(
            code, silent=True, store_history=False, user_expressions=expressions or {}
        )
        return client, msg_id

    @staticmethod
    async def reply(client: Any, msg_id: str, timeout: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                assert left > 0, "the kernel did not answer"
                msg = await client.get_shell_msg(timeout=left)
                if msg["parent_header"].get("msg_id") == msg_id:
                    content: dict[str, Any] = msg["content"]
                    return content
        finally:
            client.stop_channels()

    async def run(self, source: str) -> None:
        """Run ``source`` in the kernel with globals of its own: the user's stay as they are."""
        content = await self.reply(*self.send(f"exec({source!r}, {{}})"))
        assert content["status"] == "ok", content

    async def value(self, expression: str) -> Any:
        content = await self.reply(*self.send(expressions={"v": expression}))
        result = content["user_expressions"]["v"]
        assert result["status"] == "ok", result
        return ast.literal_eval(result["data"]["text/plain"])


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """Started and stopped on a loop of its own: each test runs on a new loop (pytest-jupyter),
    and the kernel's clients are made on the test's."""
    root = tmp_path_factory.mktemp("probe")
    spec = root / "kernels" / "probe"
    spec.mkdir(parents=True)
    # this interpreter, where jupyter_dlinfra is importable, whatever kernels the machine has
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "probe", "language": "python"})
    )
    km = SerialRestartMappingKernelManager(  # type: ignore[no-untyped-call]
        root_dir=str(root),
        connection_dir=str(root),
        kernel_spec_manager=KernelSpecManager(
            kernel_dirs=[str(Path(root, "kernels"))], ensure_native_kernel=False
        ),
    )
    loop = asyncio.new_event_loop()
    try:
        kernel_id = loop.run_until_complete(km.start_kernel(kernel_name="probe"))
        started = Kernel(km, kernel_id)
        # answering once means it is up: the timings below are the probe's alone
        loop.run_until_complete(started.value("1"))
        yield started
        loop.run_until_complete(km.shutdown_kernel(kernel_id, now=True))
    finally:
        loop.close()


_FAKE_TORCH = "from __future__ import annotations\n" + inspect.getsource(fake_torch)


async def _install_fake_torch(kernel: Kernel, **options: Any) -> None:
    await kernel.run(
        f"{_FAKE_TORCH}\nimport sys\nsys.modules.update(fake_torch(**{options!r}))",
    )


async def _remove_fake_torch(kernel: Kernel) -> None:
    await kernel.run(
        "import sys\n"
        "for name in [n for n in sys.modules if n.split('.')[0] == 'torch']:\n"
        "    del sys.modules[name]\n"
    )


async def test_a_fresh_kernel_answers_with_nothing_to_park(kernel: Kernel) -> None:
    result = await probe_for_parking(kernel.km, kernel.id)
    assert result.ok, result.reason
    assert result.reason is None
    assert result.blockers == []
    assert result.report["torch"] is False
    assert result.report["cuda_initialised"] is False
    assert result.report["pid"] == kernel.pid


async def test_nccl_in_the_kernel_blocks_and_without_it_the_cache_is_freed(
    kernel: Kernel,
) -> None:
    await _install_fake_torch(kernel, backend="nccl")
    try:
        blocked = await probe_for_parking(kernel.km, kernel.id)
        assert blocked.ok, blocked.reason
        [blocker] = blocked.blockers
        assert blocker.startswith("NCCL communicators are open (torch.distributed, backend nccl)")
        assert blocked.report["torch"] is True
        assert blocked.report["cuda_initialised"] is True
        assert await kernel.value("__import__('sys').modules['torch'].calls") == []

        await kernel.run("import sys\nsys.modules['torch'].state['backend'] = None")
        freed = await probe_for_parking(kernel.km, kernel.id)
        assert freed.ok, freed.reason
        assert freed.blockers == []
        assert (freed.report["reserved_bytes"], freed.report["freed_bytes"]) == (2 * GIB, GIB)
        calls = await kernel.value("__import__('sys').modules['torch'].calls")
        assert calls == ["synchronize:0", "empty_cache"]
    finally:
        await _remove_fake_torch(kernel)


async def test_probing_leaves_the_users_namespace_and_history_alone(kernel: Kernel) -> None:
    look = "(sorted(get_ipython().user_ns), len(In), get_ipython().execution_count)"
    before = await kernel.value(look)
    result = await probe_for_parking(kernel.km, kernel.id)
    assert result.ok, result.reason
    assert await kernel.value(look) == before


async def test_a_kernel_that_cannot_import_the_package_says_so(kernel: Kernel) -> None:
    await kernel.run("import sys\nsys.modules['jupyter_dlinfra.kernel.parking'] = None")
    try:
        result = await probe_for_parking(kernel.km, kernel.id)
    finally:
        await kernel.run("import sys\nsys.modules.pop('jupyter_dlinfra.kernel.parking')")
    assert not result.ok
    assert result.reason is not None
    assert result.reason.startswith("the kernel cannot import jupyter_dlinfra"), result.reason
    assert (result.report, result.blockers) == ({}, [])


async def test_a_busy_kernel_is_not_waited_for(kernel: Kernel) -> None:
    # asked by a client with the manager's own session id: the probe must not take its reply
    sleeper, sleep_id = kernel.send("exec('import time; time.sleep(30)', {})", own_id=False)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await probe_for_parking(kernel.km, kernel.id, timeout_s=1.5)
        assert loop.time() - started < 5
        assert result == ProbeResult(
            ok=False, reason="the kernel did not answer within 1.5 s (a cell may be running)"
        )
    finally:
        await kernel.km.interrupt_kernel(kernel.id)
        interrupted = await kernel.reply(sleeper, sleep_id)
    assert interrupted["ename"] == "KeyboardInterrupt"
    # the probe left queued behind the cell runs too, and the kernel answers again
    result = await probe_for_parking(kernel.km, kernel.id)
    assert result.ok, result.reason


async def test_a_kernel_that_is_gone_is_not_asked(kernel: Kernel) -> None:
    result = await probe_for_parking(kernel.km, "no-such-kernel")
    assert result == ProbeResult(ok=False, reason="the kernel is gone")

    class DeadKernel:
        ready = None

        async def is_alive(self) -> bool:
            return False

    class OneDeadKernel:
        def __contains__(self, kernel_id: str) -> bool:
            return True

        def get_kernel(self, kernel_id: str) -> DeadKernel:
            return DeadKernel()

    result = await probe_for_parking(OneDeadKernel(), "k")
    assert result == ProbeResult(ok=False, reason="the kernel is gone")
