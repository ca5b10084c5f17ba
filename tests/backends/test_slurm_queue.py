"""Where SLURM jobs stand among the pending jobs of their partitions (slurm_queue), read from
squeue's text as the backend asks for it. The real SLURM's answer is in test_backend_slurm.py."""

from __future__ import annotations

import time

from jupyter_dlinfra.backends.slurm_queue import Standing, parse_queue, parse_time, standings

START = "2026-12-06T07:29:09"


def line(job: str, partition: str, priority: int, reason: str, start: str = "N/A") -> str:
    return f"{job}|{partition}|{priority}|{reason}|{start}|"


def test_times_are_squeue_local_time_or_none() -> None:
    assert parse_time(START) == time.mktime((2026, 12, 6, 7, 29, 9, 0, 0, -1))
    for unknown in ("N/A", "Unknown", "None", ""):
        assert parse_time(unknown) is None


def test_positions_follow_priority_then_submission_among_competing_jobs() -> None:
    text = "\n".join(
        [
            line("14", "gpu", 100, "Priority"),
            line("12", "gpu", 100, "Priority"),
            line("11", "gpu", 500, "Resources", START),
            # not in the race: held, waiting for a parent
            line("10", "gpu", 900, "JobHeldUser"),
            line("9", "gpu", 900, "Dependency"),
            # another partition's jobs do not count
            line("8", "cpu", 999, "Resources"),
            "garbage without fields",
            "7|gpu|high|Priority|N/A|",  # not a priority squeue prints: left out
        ]
    )
    entries = parse_queue(text)
    assert [e.job_id for e in entries] == ["14", "12", "11", "10", "9", "8"]
    found = standings(entries, {"11", "12", "14", "9"})
    assert found["11"] == Standing(1, 3, "gpu", parse_time(START))
    assert found["12"] == Standing(2, 3, "gpu", None)
    assert found["14"] == Standing(3, 3, "gpu", None)
    # a job that does not compete has no place, but the queue's length is said
    assert found["9"] == Standing(None, 3, "gpu", None)
    # a job squeue does not show has no standing
    assert standings(entries, {"99"}) == {}


def test_array_tasks_rank_by_their_array_then_task() -> None:
    # tasks split off an array run before the tasks still pending together (20_[4-9])
    entries = parse_queue(
        "\n".join(
            [
                line("20_3", "gpu", 10, "Priority"),
                line("20_[4-9]", "gpu", 10, "Priority"),
                line("20_1", "gpu", 10, "Priority"),
                line("19", "gpu", 10, "Priority"),
            ]
        )
    )
    found = standings(entries, {"19", "20_1", "20_3", "20_[4-9]"})
    assert [found[j].position for j in ("19", "20_1", "20_3", "20_[4-9]")] == [1, 2, 3, 4]


def test_a_job_of_several_partitions_stands_where_it_is_nearest_the_front() -> None:
    entries = parse_queue(
        "\n".join(
            [
                line("1", "big", 900, "Resources"),
                line("2", "big", 800, "Priority"),
                line("3", "small", 100, "Resources"),
                line("4", "big,small", 500, "Priority"),
            ]
        )
    )
    found = standings(entries, {"4"})
    assert found["4"] == Standing(1, 2, "small", None)
    assert standings(entries, {"2"})["2"] == Standing(2, 3, "big", None)
