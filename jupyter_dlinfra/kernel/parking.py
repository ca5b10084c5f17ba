"""Ready this kernel's GPU memory for parking, and say what would stop it.

Parking checkpoints an idle kernel's GPU memory to host memory from outside the process (lock,
then checkpoint, on its pid) and hands its GPUs back to the pool. Two things can only be done or
seen from inside: shrinking what is copied (PyTorch's cache of freed blocks), and the state that
CUDA checkpointing cannot save. The server asks for both just before it locks, by evaluating
``prepare_json()`` here as a user expression, so nothing is bound in the user's namespace.

Nothing here imports a framework: a library counts only when the user has imported it already
(``sys.modules``), and CUDA is touched only where PyTorch has initialised it.

What is detected, each from the library's own state:

* NCCL communicators of ``torch.distributed``: the default group's backend, and every group's
  where ``distributed_c10d._world.pg_map`` (not public) is readable. A group whose backend is
  NCCL counts even before its first collective, when PyTorch may not have made the
  communicator yet: from outside the two look the same.
* ``cupy.cuda.nccl.NcclCommunicator`` objects bound to a global name of the notebook, directly
  or as the ``_comm`` of an object there (``cupyx.distributed``'s backend).
* CUDA tensors shared between processes with ``torch.multiprocessing`` (CUDA IPC), on either
  side, while a storage that was sent or received is alive (``reductions.shared_cache``).
* Managed (unified) memory from RAPIDS rmm, when the current device's resource, or one it draws
  on, is a ``ManagedMemoryResource``.

What is not detected: NCCL communicators that cupy holds anywhere but a global name, and those of
other libraries (JAX, TensorFlow, NCCL called directly); CUDA IPC done without
``torch.multiprocessing`` (cupy's or the driver's IPC handles), and memory that PyTorch keeps for
a consumer after the sending tensor itself is gone (until ``torch.cuda.ipc_collect()``); managed
memory other than rmm's (``cupy.cuda.malloc_managed``, numba's managed arrays, a custom
PyTorch allocator, ``cudaMallocManaged`` from an extension), and rmm resources set for a device
other than the current one.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from jupyter_dlinfra.kernel.cuda_state import cuda_initialised

__all__ = ["prepare", "prepare_json"]

#: how far down a chain of rmm adaptors (pool over managed, logging over pool, ...) to look
_RMM_CHAIN_LIMIT = 16


def prepare() -> dict[str, Any]:
    """Check this process for what CUDA checkpointing cannot save and, when nothing is found,
    finish the GPU's queued work and give PyTorch's cached blocks back to the driver.

    Returns ``pid``, ``torch`` (PyTorch is imported), ``cuda_initialised``, ``reserved_bytes``
    (what PyTorch's allocator holds, all devices together, once freed), ``freed_bytes``
    and ``blockers`` (sentences that say what stops parking and how to allow it). Never raises:
    what could not be checked is a blocker too, since parking a kernel half seen is a gamble.
    """
    blockers: list[str] = []
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "torch": False,
        "cuda_initialised": False,
        "reserved_bytes": 0,
        "freed_bytes": 0,
        "blockers": blockers,
    }
    try:
        torch = sys.modules.get("torch")
        report["torch"] = torch is not None
        report["cuda_initialised"] = cuda_initialised() is not None
        checks: list[Callable[[], list[str]]] = [_torch_nccl, _cupy_nccl, _shared_cuda_tensors]
        if report["cuda_initialised"]:
            # rmm's resource getter may set up the device's default resource: not before CUDA is
            checks.append(_managed_memory)
        for check in checks:
            try:
                blockers.extend(check())
            except Exception as err:
                blockers.append(_could_not_check(err))
        if torch is not None and torch.cuda.is_initialized():
            before = _reserved(torch)
            after = before
            # with a blocker the kernel stays as it is: a synchronize could also wait for ever
            # on a collective whose peers are gone
            if not blockers:
                _drain(torch, before)
                after = _reserved(torch)
            report["reserved_bytes"] = sum(after.values())
            report["freed_bytes"] = max(0, sum(before.values()) - sum(after.values()))
    except Exception as err:
        blockers.append(_could_not_check(err))
    return report


def prepare_json() -> str:
    """``prepare()`` as JSON, the form the server reads back from a user expression."""
    try:
        return json.dumps(prepare())
    except Exception as err:  # a report that does not serialise is still an answer
        return json.dumps({"pid": os.getpid(), "blockers": [_could_not_check(err)]})


def _could_not_check(err: BaseException) -> str:
    return f"could not check this kernel for parking: {type(err).__name__}: {err}"


def _reserved(torch: Any) -> dict[int, int]:
    """Bytes PyTorch's caching allocator holds, by device (reading it sets up no device)."""
    return {
        device: int(torch.cuda.memory_reserved(device))
        for device in range(int(torch.cuda.device_count()))
    }


def _drain(torch: Any, reserved: dict[int, int]) -> None:
    """Let queued kernels finish, then free what PyTorch caches. Only devices already in use are
    synchronised: synchronising another would make a context there, the opposite of parking."""
    devices = {int(torch.cuda.current_device())} | {d for d, n in reserved.items() if n}
    for device in sorted(devices):
        torch.cuda.synchronize(device)
    # tensors kept alive only by reference cycles hold cached blocks that empty_cache cannot free
    gc.collect()
    torch.cuda.empty_cache()


def _torch_nccl() -> list[str]:
    dist = sys.modules.get("torch.distributed")
    is_initialized = getattr(dist, "is_initialized", None)
    if dist is None or is_initialized is None or not is_initialized():
        return []
    backends = {str(dist.get_backend())}
    backends.update(_group_backends())
    nccl = sorted(b for b in backends if "nccl" in b.lower())
    if not nccl:
        return []
    return [
        f"NCCL communicators are open (torch.distributed, backend {', '.join(nccl)}): CUDA "
        "checkpointing cannot save them; call torch.distributed.destroy_process_group() to "
        "allow parking"
    ]


def _group_backends() -> set[str]:
    """Backends of every process group, subgroups included; empty where PyTorch's private table
    has moved, so that the default group's check still stands."""
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    try:
        pg_map = c10d._world.pg_map  # type: ignore[union-attr]
        return {str(entry[0] if isinstance(entry, tuple) else entry) for entry in pg_map.values()}
    except Exception:
        return set()


def _cupy_nccl() -> list[str]:
    nccl = sys.modules.get("cupy.cuda.nccl")
    communicator = getattr(nccl, "NcclCommunicator", None)
    main = sys.modules.get("__main__")
    if not isinstance(communicator, type) or main is None:
        return []
    # the notebook's globals are __main__'s: where a communicator made in a cell is kept
    names = sorted(
        name
        for name, value in list(vars(main).items())
        if isinstance(value, communicator)
        or isinstance(getattr(value, "_comm", None), communicator)
    )
    if not names:
        return []
    return [
        f"NCCL communicators are open (cupy.cuda.nccl, held by {', '.join(names)}): CUDA "
        "checkpointing cannot save them; destroy them (NcclCommunicator.destroy()) and delete "
        "those names to allow parking"
    ]


def _shared_cuda_tensors() -> list[str]:
    torch = sys.modules.get("torch")
    reductions = sys.modules.get("torch.multiprocessing.reductions")
    cache = getattr(reductions, "shared_cache", None)
    from_cache = getattr(reductions, "storage_from_cache", None)
    if torch is None or not cache or from_cache is None:
        return []
    # the cache also holds CPU storages shared through shared memory (DataLoader workers send
    # those): only CUDA ones are IPC
    shared = 0
    for key, ref in list(dict.items(cache)):
        if ref.expired():
            continue
        storage = from_cache(torch.UntypedStorage, key)
        if getattr(getattr(storage, "device", None), "type", None) == "cuda":
            shared += 1
    if not shared:
        return []
    return [
        f"CUDA tensors are shared with other processes (torch.multiprocessing, CUDA IPC, "
        f"{shared} storage{'s' if shared > 1 else ''}): CUDA checkpointing cannot save memory "
        "shared between processes; delete the shared tensors here and in the processes that "
        "received them, then call torch.cuda.ipc_collect(), to allow parking"
    ]


def _managed_memory() -> list[str]:
    mr = sys.modules.get("rmm.mr")
    managed = getattr(mr, "ManagedMemoryResource", None)
    current = getattr(mr, "get_current_device_resource", None)
    if not isinstance(managed, type) or current is None:
        return []
    resource = current()
    for _ in range(_RMM_CHAIN_LIMIT):
        if resource is None:
            break
        if isinstance(resource, managed):
            return [
                "managed (unified) memory is in use (rmm, ManagedMemoryResource): CUDA "
                "checkpointing cannot save it; restart the kernel without managed memory "
                "(rmm.reinitialize(managed_memory=False) before any allocation) to allow parking"
            ]
        resource = getattr(resource, "upstream_mr", None)
    return []
