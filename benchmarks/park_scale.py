"""What does the ledger's half of a park and a resume cost at cluster scale?

A park, as the server makes it (``server/parking.py``), writes two steps through
:class:`jupyter_dlinfra.core.books.parking.ParkBook`: ``begin`` (``parking``) and, once the
checkpoint is done, ``parked`` (the grant's GPUs out of its hands, a pass that lends them to the
waiting preemptible jobs of its node and of the pool). A resume writes ``resume`` (the loans are
marked preempted, or at once ``restoring`` when nothing was lent), then, once the loans ended and
the process is restored, ``resumed``. The checkpoint and the restore themselves (seconds, on a
GPU: ``benchmarks/park_resume.py``) and the loans' own stop are not the ledger's and are not
timed here; the loans' releases are made untimed as the harness's bookkeeping.

The ledger is seeded as ``benchmarks/ledger_scale.py`` seeds it (its ``Seeder``: 200 users in 20
groups, the three default classes, quotas and shares; every node full, ``waiting`` requests
queued), on a SQLite file. Each round parks a random kernel's grant (kind kernel), resumes it,
releases its loans and completes the resume. Baseline, in the same run and on the same ledger:
a plain ``release`` of a grant that makes room for a waiting request (the change a user's
``%gpu release`` makes), measured by ``ledger_scale``'s harness.

Figures: p50/p99 of park (begin + parked) and resume (resume + resumed), ms, per configuration;
``growth``: the park's p50 at the largest configuration over the smallest's. Last line:
``RESULT park_p99_ms=... resume_p99_ms=... park_p50_ms=... resume_p50_ms=...
release_p50_ms=... growth=... lent=...`` (``lent``: rounds whose park lent GPUs).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import ledger_scale  # noqa: E402

from jupyter_dlinfra.core.books.ledger import Ledger  # noqa: E402
from jupyter_dlinfra.core.books.parking import ParkBook  # noqa: E402
from jupyter_dlinfra.core.clock import SystemClock  # noqa: E402
from jupyter_dlinfra.core.models import AllocationState  # noqa: E402
from jupyter_dlinfra.core.store import Store  # noqa: E402

SIZES = ("16x0", "1024x10000")
ROUNDS = 40


@dataclass
class Figures:
    label: str
    park: list[float] = field(default_factory=list)
    resume: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)
    lent: int = 0


def _p(values: Sequence[float], pct: float) -> float:
    return ledger_scale.p(values, pct) * 1000.0


def run(config: ledger_scale.Config, *, rounds: int, seed: int) -> Figures:
    figures = Figures(config.label)
    state = ledger_scale.Seeder(config, seed=seed).build()
    with ledger_scale.sqlite_url() as url:
        store = Store(url)
        try:
            ledger_scale.write_seed(store, state)
        finally:
            store.dispose()
        store = Store(url)
        ledger = Ledger(
            store,
            SystemClock(),
            policy=state.policy,
            groups_of=ledger_scale.groups_of,
            freeze_loaded_state=True,
        )
        try:
            _measure(ledger, state, figures, rounds=rounds, seed=seed)
        finally:
            ledger.close()
            store.dispose()
    return figures


def _measure(
    ledger: Ledger, state: ledger_scale.Seed, figures: Figures, *, rounds: int, seed: int
) -> None:
    rng = random.Random(seed + 1)
    book = ParkBook(ledger)
    kernels = sorted(a.id for a in state.granted() if a.kind == "kernel")
    ledger.queue_length()  # the load of the state, as a server's first call makes it
    result = ledger_scale.Measured("sqlite", figures_config(state))
    harness = ledger_scale.Harness(ledger, state, rng, result)
    for _ in range(rounds):
        aid = rng.choice(kernels)
        alloc = ledger.allocation(aid)
        if alloc.state is not AllocationState.GRANTED or alloc.park_state is not None:
            continue
        t0 = time.perf_counter()
        book.begin(aid, reason="parked: benchmark")
        book.parked(aid, gpu_bytes=1 << 30, seconds=1.0)
        figures.park.append(time.perf_counter() - t0)
        loans = [a for a in ledger.allocations(state=AllocationState.GRANTED) if a.on_loan]
        loans = [a for a in loans if set(a.gpus) & set(alloc.gpus)]
        figures.lent += int(bool(loans))
        t0 = time.perf_counter()
        resumed = book.resume(aid)
        took = time.perf_counter() - t0
        for loan in loans:  # the loans stop: their owners' business, untimed
            ledger.release(loan.id, reason="job preempted")
        t0 = time.perf_counter()
        if ledger.allocation(aid).park_state == "restoring" or resumed.park_state == "restoring":
            book.resumed(aid, seconds=1.0)
        figures.resume.append(took + time.perf_counter() - t0)
        harness.tracker.follow(ledger)
        harness.pair()  # a request and a release that makes room: the baseline change
    figures.release = list(result.release)


def figures_config(state: ledger_scale.Seed) -> ledger_scale.Config:
    return state.config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="NODESxWAITING")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--seed", type=int, default=ledger_scale.SEED)
    args = parser.parse_args(argv)
    configs = ledger_scale.parse_sizes(args.sizes)
    done = []
    print(f"{len(configs)} configurations on sqlite, {args.rounds} rounds each", flush=True)
    for config in configs:
        done.append(run(config, rounds=args.rounds, seed=args.seed))
    print("\nms p50/p99   park (begin + parked)   resume (+ resumed)   release (baseline)   lent")
    for f in done:
        print(
            f"{f.label:>12} {_p(f.park, 50):10.2f}/{_p(f.park, 99):<8.2f}"
            f"{_p(f.resume, 50):12.2f}/{_p(f.resume, 99):<8.2f}"
            f"{_p(f.release, 50):12.2f}/{_p(f.release, 99):<8.2f}{f.lent:>6}/{len(f.park)}"
        )
    first, last = done[0], done[-1]
    grown = _p(last.park, 50) / max(_p(first.park, 50), 1e-9)
    print(
        f"park at {last.label} costs {_p(last.park, 50) / max(_p(last.release, 50), 1e-9):.1f} x "
        f"a release there; growth from {first.label}: x{grown:.2f}"
    )
    print(
        f"RESULT park_p99_ms={_p(last.park, 99):.3f} resume_p99_ms={_p(last.resume, 99):.3f} "
        f"park_p50_ms={_p(last.park, 50):.3f} resume_p50_ms={_p(last.resume, 50):.3f} "
        f"release_p50_ms={_p(last.release, 50):.3f} growth={grown:.2f} lent={last.lent}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
