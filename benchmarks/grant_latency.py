"""How long does ``%gpu 1`` take when a GPU is free, next to one bare loopback API round trip?

Runs a real ``jupyter server`` with the dlinfra extension and 8 simulated GPUs (SQLite ledger in a
temporary directory), starts one python3 kernel, and times inside that kernel:

* grant: ``get_ipython().run_line_magic("gpu", "1")`` (``%gpu release`` afterwards, not timed);
* baseline: ``KernelApiClient.from_env(os.environ).call("GET", "queue")``, one authenticated
  loopback round trip through the server.

Usage: ``.venv/bin/python benchmarks/grant_latency.py [--quick]``. The last line printed starts
with ``RESULT`` and holds key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from jupyter_dlinfra.testing.server import KernelSession, ServerProcess

SIMULATED_GPUS = 8
TARGET_P50_MS = 20.0
WARMUP = 10

# Runs inside the kernel. stdout of the magic is swallowed so that streaming text over the
# websocket is not what gets measured; stderr is captured per call and turned into an error.
KERNEL_HELPERS = textwrap.dedent(
    """
    import contextlib as _bc
    import io as _bio
    import json as _bj
    import os as _bos
    from time import perf_counter as _bpc

    from jupyter_dlinfra.kernel.client import KernelApiClient as _BClient


    def _bench_magic(line, i, what):
        out, err = _bio.StringIO(), _bio.StringIO()
        with _bc.redirect_stdout(out), _bc.redirect_stderr(err):
            t0 = _bpc()
            get_ipython().run_line_magic("gpu", line)
            t1 = _bpc()
        if err.getvalue():
            raise RuntimeError(f"{what} {i}: %gpu {line} wrote to stderr: {err.getvalue()!r}")
        return t1 - t0


    def _bench_grants(n, label):
        times = []
        for i in range(n):
            dt = _bench_magic("1", i, label)
            cvd = _bos.environ.get("CUDA_VISIBLE_DEVICES", "")
            if not cvd.startswith("GPU-") or "," in cvd:
                raise RuntimeError(f"{label} {i}: CUDA_VISIBLE_DEVICES={cvd!r} after %gpu 1")
            _bench_magic("release", i, label)
            if _bos.environ.get("CUDA_VISIBLE_DEVICES"):
                raise RuntimeError(f"{label} {i}: CUDA_VISIBLE_DEVICES still set after release")
            times.append(dt)
        return times


    def _bench_rtt(n):
        client = _BClient.from_env(_bos.environ)
        times = []
        for _ in range(n):
            t0 = _bpc()
            client.call("GET", "queue")
            times.append(_bpc() - t0)
        return times
    """
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50": statistics.median(ms),
        "p99": percentile(ms, 99),
        "mean": statistics.fmean(ms),
        "min": min(ms),
        "max": max(ms),
    }


def run_in_kernel(kernel: KernelSession, code: str, *, timeout: float = 300.0) -> list[float]:
    """Run ``code`` (an expression giving a list of floats); fail on error or any stderr."""
    result = kernel.execute(f"print(_bj.dumps({code}))", timeout=timeout)
    if result.error or result.stderr:
        raise RuntimeError(f"kernel failed on {code!r}: {result.error or ''} {result.stderr}")
    values: list[float] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 iterations instead of 200")
    args = parser.parse_args()
    n = 40 if args.quick else 200

    with tempfile.TemporaryDirectory(prefix="dlinfra-bench-grant-") as tmp:
        workdir = Path(tmp)
        server = ServerProcess(
            workdir,
            db_url=f"sqlite:///{workdir / 'ledger.sqlite'}",
            simulated_gpus=SIMULATED_GPUS,
        )
        kernel: KernelSession | None = None
        try:
            server.start()
            kernel = server.start_kernel("python3")
            setup = kernel.execute(KERNEL_HELPERS)
            if setup.error or setup.stderr:
                raise RuntimeError(f"kernel setup failed: {setup.error} {setup.stderr}")
            if not kernel.value('get_ipython().find_line_magic("gpu") is not None'):
                raise RuntimeError("%gpu magic is not registered in the kernel")

            run_in_kernel(kernel, f"_bench_grants({WARMUP}, 'warm-up')")
            run_in_kernel(kernel, f"_bench_rtt({WARMUP})")
            grants = summarize(run_in_kernel(kernel, f"_bench_grants({n}, 'grant')"))
            rtt = summarize(run_in_kernel(kernel, f"_bench_rtt({n})"))
            leftover = kernel.value("len(_BClient.from_env(_bos.environ).my_allocations())")
            if leftover:
                raise RuntimeError(f"kernel still holds {leftover} allocation(s) after the run")
        except BaseException:
            log = server.log_text()
            if log:
                print(f"--- server log (tail) ---\n{log[-3000:]}", file=sys.stderr)
            raise
        finally:
            if kernel is not None:
                try:
                    kernel.shutdown()
                except Exception as err:  # the server stop below shuts it down anyway
                    print(f"kernel shutdown failed: {err}", file=sys.stderr)
            server.stop()

    ratio = grants["p50"] / rtt["p50"]
    print(f"grant latency, N={n} (+{WARMUP} warm-up), {SIMULATED_GPUS} simulated GPUs, SQLite")
    print(f"{'ms':<28}{'p50':>8}{'p99':>8}{'mean':>8}{'min':>8}{'max':>8}")
    for label, s in (("%gpu 1 (free GPU)", grants), ("GET dlinfra/api/queue", rtt)):
        cells = "".join(f"{s[k]:>8.2f}" for k in ("p50", "p99", "mean", "min", "max"))
        print(f"{label:<28}{cells}")
    verdict = "met" if grants["p50"] < TARGET_P50_MS else "MISSED"
    print(f"target: grant p50 < {TARGET_P50_MS:.0f} ms ({verdict}); grant/rtt p50 = {ratio:.2f}x")
    print(
        f"RESULT grant_p50_ms={grants['p50']:.3f} grant_p99_ms={grants['p99']:.3f} "
        f"grant_mean_ms={grants['mean']:.3f} baseline_rtt_p50_ms={rtt['p50']:.3f} "
        f"baseline_rtt_p99_ms={rtt['p99']:.3f} grant_over_rtt={ratio:.2f} n={n}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
