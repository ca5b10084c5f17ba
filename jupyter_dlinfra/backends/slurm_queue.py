"""Where SLURM jobs stand among the pending jobs of their partition, read from one ``squeue``.

SLURM's main scheduler considers pending jobs partition by partition in order of priority
(multifactor: age, fair share, QOS, partition, nice...), the job submitted first among equals.
So a job's **position** is one plus the pending jobs of its partition that SLURM ranks above it,
counting only those that compete for resources: jobs held, waiting for a dependency or for their
begin time are not in the race until that changes. A job submitted to several partitions stands
where it is nearest the front. The **estimated start** is SLURM's own (``squeue --start``: the
backfill scheduler's plan, which needs time limits on the running jobs; ``N/A`` until then).

Only the jobs ``squeue`` shows are counted: with ``PrivateData=jobs`` other users' jobs are
hidden, and positions are then among one's own.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["FORMAT", "QueueEntry", "Standing", "parse_queue", "parse_time", "standings"]

#: the ``squeue --Format`` this module parses (``|`` ends each field)
FORMAT = "JobID:|,Partition:|,PriorityLong:|,Reason:|,StartTime:|"

#: pending reasons of jobs that do not compete for resources (yet)
NOT_COMPETING = frozenset(
    {
        "BeginTime",
        "Dependency",
        "DependencyNeverSatisfied",
        "JobHeldAdmin",
        "JobHeldUser",
        "JobArrayTaskLimit",
    }
)


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    partitions: tuple[str, ...]
    priority: int
    reason: str
    #: SLURM's expected start (epoch seconds), None when it has none
    start: float | None

    @property
    def competing(self) -> bool:
        return self.reason not in NOT_COMPETING

    def order(self) -> tuple[int, int, int, str]:
        """SLURM's order: highest priority first, then the job submitted first (array tasks
        ``123_4`` by their array's id, then the task)."""
        head, _, task = self.job_id.partition("_")
        number = int(head) if head.isdigit() else 2**62
        # "20_[4-9]": the tasks still pending together come after those split off before them
        first = re.search(r"\d+", task)
        index = int(first.group()) if first else 0
        return (-self.priority, number, index, self.job_id)


@dataclass(frozen=True)
class Standing:
    #: 1-based, among the competing pending jobs of the partition; None: it does not compete
    position: int | None
    #: how many pending jobs of that partition compete
    length: int
    partition: str
    estimated_start: float | None


def parse_time(value: str) -> float | None:
    """A time as squeue prints it (local time, ISO 8601 without a zone) -> epoch seconds."""
    value = value.strip()
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None  # N/A, Unknown, None


def parse_queue(text: str) -> list[QueueEntry]:
    """The lines of ``squeue --noheader --Format=FORMAT``; lines of another shape are left out."""
    found: list[QueueEntry] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 5 or not fields[0]:
            continue
        try:
            priority = int(fields[2])
        except ValueError:
            continue
        partitions = tuple(p for p in fields[1].split(",") if p)
        found.append(QueueEntry(fields[0], partitions, priority, fields[3], parse_time(fields[4])))
    return found


def standings(entries: Iterable[QueueEntry], wanted: Collection[str]) -> dict[str, Standing]:
    """The standing of each job of ``wanted`` found among ``entries`` (pending jobs), by id."""
    by_partition: dict[str, list[QueueEntry]] = defaultdict(list)
    mine: dict[str, QueueEntry] = {}
    for entry in entries:
        if entry.job_id in wanted:
            mine[entry.job_id] = entry
        if entry.competing or entry.job_id in wanted:
            for partition in entry.partitions:
                by_partition[partition].append(entry)
    ranked: dict[str, dict[str, int]] = {}
    lengths: dict[str, int] = {}
    for partition, queue in by_partition.items():
        queue.sort(key=QueueEntry.order)
        places: dict[str, int] = {}
        ahead = 0
        for entry in queue:
            if entry.competing:
                ahead += 1
                if entry.job_id in wanted:
                    places[entry.job_id] = ahead
        ranked[partition] = places
        lengths[partition] = ahead
    found: dict[str, Standing] = {}
    for job_id, entry in mine.items():
        best: Standing | None = None
        for partition in entry.partitions:
            place = ranked[partition].get(job_id)
            here = Standing(place, lengths[partition], partition, entry.start)
            if best is None or (place is not None and (best.position or 2**62) > place):
                best = here
        if best is not None:
            found[job_id] = best
    return found
