"""Park and resume a real kernel's GPU memory with CUDA checkpointing; check nothing changed.

Starts an ipykernel kernel of this interpreter (jupyter_client's ``KernelManager``), and for each
size in ``--sizes-gib`` (default 1, 8 and 40 GiB): fills a PyTorch tensor of that size on GPU 0
with random integers and takes its digest in the kernel (an int64 sum, position-weighted sums per
256 MiB chunk and a SHA-256 of a strided sample), empties PyTorch's cache, parks the kernel with
``CudaCheckpointer.park``, reads from NVML that the GPU memory was given back (the kernel's process
gone from the GPU's compute processes, or the GPU's used memory down by at least 95 % of the
tensor), resumes with ``CudaCheckpointer.resume``, takes the digest again in the kernel and frees
the tensor. A size that does not fit in the GPU's free memory, or whose parking the checkpointer
refuses (host memory short), is skipped with a line saying why.

Needs an NVIDIA GPU with driver 570 or later, PyTorch with CUDA in this interpreter and
cuda-bindings (``pip install 'jupyter-dlinfra[cuda]'``); without them it prints one line saying
what is missing and exits with status 2.

Usage: ``.venv/bin/python benchmarks/park_resume.py [--sizes-gib 1,8,40] [--timeout-s 120]``.
Prints a table, then a last line starting with ``RESULT`` that holds key=value pairs:
``park_s_<size>`` and ``resume_s_<size>`` (the driver's seconds, or ``skip``),
``park_wall_s_<size>`` and ``resume_wall_s_<size>`` (the same with the helper process's start,
as the server waits), ``identical`` (1 when every size that ran came back bit-identical) and
``parked_memory_freed`` (1 when every parked size gave its GPU memory back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1 << 30
MIB = 1 << 20
#: GPU memory a size needs beyond the tensor: the kernel's CUDA context and the digest's
#: temporaries (an int64 copy of one 256 MiB chunk, its weights and their product: 1.5 GiB)
GPU_HEADROOM_BYTES = 3 * GIB
#: the share of the tensor the GPU's used memory must fall by while parked
FREED_SHARE = 0.95

KERNEL_SETUP = """
import hashlib, json, torch
assert torch.cuda.is_available(), "PyTorch in the kernel sees no CUDA GPU"
torch.cuda.init()
_warm = torch.ones(1, device="cuda")
torch.cuda.synchronize()
_props = torch.cuda.get_device_properties(0)

def _digest(t):
    total = int(t.sum(dtype=torch.int64))
    weighted = 0
    for index, chunk in enumerate(t.split(1 << 26)):
        weights = torch.arange(1, chunk.numel() + 1, device=chunk.device, dtype=torch.int64)
        part = int((chunk.to(torch.int64) * weights).sum())
        weighted = (weighted * 1000003 + (index + 1) * part) % (1 << 61)
        del weights
    stride = max(1, t.numel() // 65536)
    sample = t[::stride][:65536].cpu().tolist()
    sampled = hashlib.sha256(repr(sample).encode()).hexdigest()
    return f"{total}:{weighted}:{sampled}"

print(json.dumps({
    "torch": torch.__version__,
    "name": _props.name,
    "uuid": str(getattr(_props, "uuid", "")),
}))
"""

KERNEL_ALLOCATE = """
_t = torch.empty({count}, dtype=torch.int32, device="cuda")
_t.random_()
torch.cuda.synchronize()
_before = _digest(_t)
torch.cuda.empty_cache()
torch.cuda.synchronize()
print(json.dumps({{"digest": _before}}))
"""

KERNEL_CHECK = """
print(json.dumps({"digest": _digest(_t)}))
"""

KERNEL_FREE = """
del _t
torch.cuda.empty_cache()
torch.cuda.synchronize()
"""


class CannotRun(Exception):
    """Something this machine lacks; said in one line, exit status 2."""


@dataclass
class Row:
    label: str
    size_gib: float
    park_s: float | None = None
    resume_s: float | None = None
    #: the same, as the caller waits for it: the helper process's start included
    park_wall_s: float | None = None
    resume_wall_s: float | None = None
    parked_process_mib: float | None = None
    freed_gib: float | None = None
    freed: bool | None = None
    identical: bool | None = None
    note: str = ""


def parse_sizes(text: str) -> list[tuple[str, float]]:
    sizes = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        value = float(piece)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"sizes must be positive, got {piece}")
        label = f"{value:g}".replace(".", "p")
        sizes.append((label, value))
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


# -- what this machine must have -----------------------------------------------------------------


def preflight() -> Any:
    """NVML started, or CannotRun saying what is missing; returns the pynvml module."""
    if not sys.platform.startswith("linux"):
        raise CannotRun(f"CUDA checkpointing works on Linux only; this is {sys.platform}")
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:
        raise CannotRun(f"no NVIDIA GPU or driver (NVML: {err})") from err
    if pynvml.nvmlDeviceGetCount() == 0:
        raise CannotRun("no NVIDIA GPU (NVML lists none)")
    for module, what in (
        ("torch", "PyTorch"),
        ("jupyter_client", "jupyter_client"),
        ("ipykernel", "ipykernel"),
    ):
        if importlib.util.find_spec(module) is None:
            raise CannotRun(f"{what} is not installed in {sys.executable}")
    from jupyter_dlinfra.checkpoint import CudaCheckpointer, capability_refusal

    reason = capability_refusal(CudaCheckpointer().facts())
    if reason is not None:
        raise CannotRun(reason)
    return pynvml


# -- the kernel --------------------------------------------------------------------------------


class Kernel:
    """An ipykernel kernel of this interpreter, run for the benchmark's code."""

    def __init__(self, workdir: Path, timeout_s: float) -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        spec_dir = workdir / "kernels" / "python3"
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (park_resume)",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        specs = KernelSpecManager(kernel_dirs=[str(workdir / "kernels")])
        self.timeout_s = timeout_s
        self.manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
        self.manager.start_kernel(cwd=str(workdir))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=timeout_s)
        pid = getattr(self.manager.provisioner, "pid", None)
        if not isinstance(pid, int):
            raise RuntimeError("the kernel's process id is not known to its provisioner")
        self.pid = pid

    def run(self, code: str) -> dict[str, Any]:
        """Run ``code``; the JSON object it printed last."""
        printed: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"].get("name") == "stdout":
                printed.append(msg["content"]["text"])

        reply = self.client.execute_interactive(
            code, timeout=self.timeout_s, output_hook=hook, store_history=False
        )
        content = reply["content"]
        if content.get("status") != "ok":
            raise RuntimeError(
                f"in the kernel: {content.get('ename')}: {content.get('evalue')}\n"
                + "\n".join(content.get("traceback", []))
            )
        lines = [line for line in "".join(printed).splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def close(self) -> None:
        try:
            self.client.stop_channels()
        finally:
            # a parked kernel must not be asked to shut down: its CUDA calls would block
            self.manager.shutdown_kernel(now=True)


# -- NVML readings -------------------------------------------------------------------------------


def find_gpu(nvml: Any, uuid: str, pid: int) -> Any:
    """The NVML handle of the kernel's GPU: by UUID, else where the kernel's process shows."""
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in range(count)]
    if uuid:
        for handle in handles:
            found = str(nvml.nvmlDeviceGetUUID(handle))
            if found.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
                return handle
    for handle in handles:
        if process_bytes(nvml, handle, pid) is not None:
            return handle
    return handles[0]


def process_bytes(nvml: Any, handle: Any, pid: int) -> int | None:
    """GPU memory NVML counts for ``pid`` on this GPU; None when it is not among its processes."""
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid:
            return int(proc.usedGpuMemory or 0)
    return None


def used_bytes(nvml: Any, handle: Any) -> int:
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)


def free_bytes(nvml: Any, handle: Any) -> int:
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).free)


# -- one size ------------------------------------------------------------------------------------


def measure(
    kernel: Kernel, nvml: Any, gpu: Any, checkpointer: Any, row: Row, timeout_s: float
) -> None:
    """Fill ``row``; CheckpointFailed leaves the tensor allocated for the caller to judge."""
    size_bytes = int(row.size_gib * GIB)
    free = free_bytes(nvml, gpu)
    if size_bytes + GPU_HEADROOM_BYTES > free:
        row.note = (
            f"skipped: needs {(size_bytes + GPU_HEADROOM_BYTES) / GIB:.1f} GiB of GPU memory, "
            f"the GPU has {free / GIB:.1f} GiB free"
        )
        return
    refusal = checkpointer.refusal(kernel.pid, [kernel.pid], size_bytes)
    if refusal is not None:
        row.note = f"skipped: {refusal}"
        return
    before = kernel.run(KERNEL_ALLOCATE.format(count=size_bytes // 4))["digest"]
    used_before = used_bytes(nvml, gpu)
    clock = time.perf_counter()
    row.park_s = checkpointer.park(kernel.pid, timeout_s=timeout_s).seconds
    row.park_wall_s = time.perf_counter() - clock
    state = checkpointer.state(kernel.pid)
    held = process_bytes(nvml, gpu, kernel.pid)
    freed_bytes = used_before - used_bytes(nvml, gpu)
    row.parked_process_mib = 0.0 if held is None else held / MIB
    row.freed_gib = freed_bytes / GIB
    row.freed = held is None or freed_bytes >= FREED_SHARE * size_bytes
    if state != "checkpointed":
        row.note = f"state while parked: {state}"
    clock = time.perf_counter()
    row.resume_s = checkpointer.resume(kernel.pid, timeout_s=timeout_s).seconds
    row.resume_wall_s = time.perf_counter() - clock
    after = kernel.run(KERNEL_CHECK)["digest"]
    row.identical = after == before
    if not row.identical:
        row.note = f"digest before {before}, after {after}"
    kernel.run(KERNEL_FREE)


def state_quietly(checkpointer: Any, pid: int) -> str:
    try:
        return str(checkpointer.state(pid))
    except Exception as err:
        return f"unknown ({err})"


# -- output --------------------------------------------------------------------------------------

COLUMNS = ("size GiB", "park s", "resume s", "GPU MiB parked", "freed GiB", "identical", "note")


def print_row(cells: tuple[str, ...]) -> None:
    widths = (8, 8, 8, 14, 9, 9, 0)
    line = "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
    print(line.rstrip(), flush=True)


def cells_of(row: Row) -> tuple[str, ...]:
    def num(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def yes(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "no")

    return (
        f"{row.size_gib:g}",
        num(row.park_s),
        num(row.resume_s),
        num(row.parked_process_mib, 0),
        num(row.freed_gib),
        yes(row.identical),
        row.note,
    )


def result_line(rows: list[Row]) -> str:
    def seconds(value: float | None) -> str:
        return "skip" if value is None else f"{value:.3f}"

    pairs = []
    for row in rows:
        pairs.append(f"park_s_{row.label}={seconds(row.park_s)}")
        pairs.append(f"resume_s_{row.label}={seconds(row.resume_s)}")
    for row in rows:
        pairs.append(f"park_wall_s_{row.label}={seconds(row.park_wall_s)}")
        pairs.append(f"resume_wall_s_{row.label}={seconds(row.resume_wall_s)}")
    ran = [row for row in rows if row.park_s is not None]
    identical = bool(ran) and all(row.identical for row in ran)
    freed = bool(ran) and all(row.freed for row in ran)
    pairs.append(f"identical={int(identical)}")
    pairs.append(f"parked_memory_freed={int(freed)}")
    return "RESULT " + " ".join(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes-gib",
        type=parse_sizes,
        default=parse_sizes("1,8,40"),
        help="tensor sizes to park, comma-separated (default 1,8,40)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=120.0,
        help="the limit for each kernel call and for each park's lock (default 120)",
    )
    args = parser.parse_args(argv)
    try:
        nvml = preflight()
    except CannotRun as missing:
        print(f"park_resume: cannot run here: {missing}", file=sys.stderr)
        return 2

    from jupyter_dlinfra.checkpoint import CheckpointFailed, CudaCheckpointer

    checkpointer = CudaCheckpointer()
    facts = checkpointer.facts()
    print(
        f"driver {facts.get('driver_version')}, CUDA {facts.get('cuda_version')}, "
        f"cuda-bindings {facts.get('bindings_version')} through {facts.get('api')}",
        flush=True,
    )
    rows = [Row(label, size) for label, size in args.sizes_gib]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="park-resume-") as workdir:
        kernel = Kernel(Path(workdir), args.timeout_s)
        try:
            try:
                info = kernel.run(KERNEL_SETUP)
            except RuntimeError as err:
                print(f"park_resume: cannot run here: {err}".splitlines()[0], file=sys.stderr)
                return 2
            gpu = find_gpu(nvml, str(info.get("uuid", "")), kernel.pid)
            print(
                f"kernel pid {kernel.pid} on {info.get('name')} (torch {info.get('torch')})",
                flush=True,
            )
            print_row(COLUMNS)
            for row in rows:
                try:
                    measure(kernel, nvml, gpu, checkpointer, row, args.timeout_s)
                except CheckpointFailed as failed:
                    row.note = f"failed: {failed}"
                    row.identical = False
                except Exception as err:
                    traceback.print_exc()
                    row.note = f"failed: {type(err).__name__}: {err}"
                    row.identical = False
                print_row(cells_of(row))
                if row.note.startswith("failed"):
                    # a kernel left parked or locked would block on its next CUDA call
                    state = state_quietly(checkpointer, kernel.pid)
                    if state != "running":
                        print(f"the kernel is left {state}: the remaining sizes are not run")
                        break
                    kernel.run(KERNEL_FREE)
        finally:
            kernel.close()
            nvml.nvmlShutdown()
    print(f"took {time.monotonic() - started:.0f} s", flush=True)
    print(result_line(rows), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
