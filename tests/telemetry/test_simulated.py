from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from jupyter_dlinfra.telemetry import SimulatedProvider

UUID_RE = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_same_inputs_give_same_gpus_and_readings() -> None:
    clock = FakeClock()
    a = SimulatedProvider(count=4, node="node-a", clock=clock, seed=7)
    b = SimulatedProvider(count=4, node="node-a", clock=clock, seed=7)
    assert a.devices() == b.devices()
    for provider in (a, b):
        provider.note_held([d.uuid for d in provider.devices()[:2]])
    for _ in range(20):
        assert a.sample() == b.sample()
        clock.now += 37.5


def test_uuids_look_like_nvml_ones_and_depend_on_node_and_index_only() -> None:
    gpus = SimulatedProvider(count=8, node="node-a").devices()
    uuids = [gpu.uuid for gpu in gpus]
    assert all(UUID_RE.match(uuid) for uuid in uuids), uuids
    assert len(set(uuids)) == 8
    assert [gpu.index for gpu in gpus] == list(range(8))
    reseeded = SimulatedProvider(count=8, node="node-a", seed=99).devices()
    assert [gpu.uuid for gpu in reseeded] == uuids
    other_node = SimulatedProvider(count=8, node="node-b").devices()
    assert not set(uuids) & {gpu.uuid for gpu in other_node}


def test_readings_stay_in_range_and_cover_idle_and_busy() -> None:
    memory = 16 * 2**30
    clock = FakeClock()
    provider = SimulatedProvider(count=8, node="n", memory_bytes=memory, clock=clock)
    provider.note_held([d.uuid for d in provider.devices()])
    utilisations = []
    for _ in range(500):
        samples = provider.sample()
        assert [s.uuid for s in samples] == [d.uuid for d in provider.devices()]
        for s in samples:
            assert 0.0 <= s.utilization_percent <= 100.0
            assert 0 <= s.memory_used_bytes <= s.memory_total_bytes == memory
            assert s.processes == ()
            assert s.at == clock.now
            utilisations.append(s.utilization_percent)
        clock.now += 61.0
    assert min(utilisations) < 5.0
    assert max(utilisations) > 80.0


def test_a_gpu_nobody_holds_looks_free_and_a_held_one_works() -> None:
    clock = FakeClock()
    provider = SimulatedProvider(count=4, node="n", clock=clock)
    held, free = provider.devices()[0].uuid, provider.devices()[1].uuid
    provider.note_held([held, "GPU-of-another-node"])
    busy = []
    for _ in range(300):
        by_uuid = {s.uuid: s for s in provider.sample()}
        for uuid in by_uuid.keys() - {held}:
            assert (by_uuid[uuid].utilization_percent, by_uuid[uuid].memory_used_bytes) == (0, 0)
        busy.append(by_uuid[held].utilization_percent)
        clock.now += 61.0
    assert max(busy) > 60.0 and min(busy) < 5.0
    # given back: free at once
    provider.note_held([])
    assert all(s.utilization_percent == 0 for s in provider.sample())
    # a pin shows what it says, held or not
    provider.set_load(free, 90.0, memory_used_bytes=2**30)
    by_uuid = {s.uuid: s for s in provider.sample()}
    assert (by_uuid[free].utilization_percent, by_uuid[free].memory_used_bytes) == (90.0, 2**30)


def test_a_foreign_process_can_be_shown_with_its_owner(tmp_path: Path) -> None:
    load = tmp_path / "load.json"
    provider = SimulatedProvider(count=2, node="n", memory_bytes=1000, load_file=str(load))
    first, second = (d.uuid for d in provider.devices())
    provider.set_load(first, 60.0, processes={42: 300, 7: 200}, users={42: "mallory"})
    load.write_text(
        json.dumps(
            {"1": {"utilization_percent": 40, "processes": {"99": 5}, "users": {"99": "eve"}}}
        )
    )
    by_uuid = {s.uuid: s for s in provider.sample()}
    assert [(p.pid, p.user) for p in by_uuid[first].processes] == [(7, None), (42, "mallory")]
    assert [(p.pid, p.user) for p in by_uuid[second].processes] == [(99, "eve")]
    # nobody holds them: what is in use is what those processes hold
    assert [by_uuid[first].memory_used_bytes, by_uuid[second].memory_used_bytes] == [500, 5]
    with pytest.raises(ValueError, match="listed processes"):
        provider.set_load(first, 60.0, processes={42: 300}, users={43: "eve"})


def test_readings_change_smoothly_as_the_clock_advances() -> None:
    clock = FakeClock()
    provider = SimulatedProvider(count=2, node="n", clock=clock)
    provider.note_held([d.uuid for d in provider.devices()])
    series = []
    for _ in range(200):
        series.append(provider.sample()[0].utilization_percent)
        clock.now += 1.0
    assert len(set(series)) > 10
    # One second apart the readings drift; they do not jump at random.
    steps = [abs(b - a) for a, b in itertools.pairwise(series)]
    assert sorted(steps)[len(steps) // 2] < 10.0


def test_seed_changes_readings() -> None:
    clock = FakeClock()
    a = SimulatedProvider(count=4, node="n", clock=clock, seed=1)
    b = SimulatedProvider(count=4, node="n", clock=clock, seed=2)
    for provider in (a, b):
        provider.note_held([d.uuid for d in provider.devices()])
    assert [s.utilization_percent for s in a.sample()] != [
        s.utilization_percent for s in b.sample()
    ]


def test_models_cycle_over_the_gpus() -> None:
    gpus = SimulatedProvider(count=5, models=("A100", "H100"), node="n").devices()
    assert [gpu.model for gpu in gpus] == ["A100", "H100", "A100", "H100", "A100"]
    assert SimulatedProvider(count=1, node="n").devices()[0].model == "Simulated A100 80GB"


def test_set_load_pins_and_clear_load_releases() -> None:
    clock = FakeClock()
    provider = SimulatedProvider(count=3, node="n", clock=clock, memory_bytes=1000)
    target = provider.devices()[1].uuid
    provider.set_load(target, 97.5, memory_used_bytes=900)
    for _ in range(10):
        pinned = {s.uuid: s for s in provider.sample()}[target]
        assert (pinned.utilization_percent, pinned.memory_used_bytes) == (97.5, 900)
        clock.now += 100.0

    provider.set_load(target, 0.0)  # memory keeps following the simulation
    assert {s.uuid: s for s in provider.sample()}[target].utilization_percent == 0.0

    provider.clear_load(target)
    unpinned = SimulatedProvider(count=3, node="n", clock=clock, memory_bytes=1000)
    assert provider.sample() == unpinned.sample()
    provider.clear_load(target)  # clearing twice is harmless


def test_set_load_rejects_bad_values() -> None:
    provider = SimulatedProvider(count=1, node="n", memory_bytes=1000)
    uuid = provider.devices()[0].uuid
    with pytest.raises(ValueError, match="no simulated GPU"):
        provider.set_load("GPU-nope", 10.0)
    with pytest.raises(ValueError, match="no simulated GPU"):
        provider.clear_load("GPU-nope")
    with pytest.raises(ValueError, match="0-100"):
        provider.set_load(uuid, 101.0)
    with pytest.raises(ValueError, match="memory used"):
        provider.set_load(uuid, 10.0, memory_used_bytes=1001)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        SimulatedProvider(count=-1, node="n")
    with pytest.raises(ValueError, match="models"):
        SimulatedProvider(count=1, models=(), node="n")
    with pytest.raises(ValueError, match="models"):
        SimulatedProvider(count=1, models=("A100", " "), node="n")
    with pytest.raises(ValueError, match="memory"):
        SimulatedProvider(count=1, node="n", memory_bytes=0)


def test_provider_identity() -> None:
    provider = SimulatedProvider(count=8, node="n")
    assert (provider.name, provider.simulated) == ("simulated", True)
    assert provider.reason == "8 simulated GPUs (no GPU hardware is used)"
    assert SimulatedProvider(count=1, node="n").reason.startswith("1 simulated GPU ")
    empty = SimulatedProvider(count=0, node="n")
    assert empty.devices() == [] and empty.sample() == []
    provider.close()


def test_set_load_lists_processes_as_nvml_would() -> None:
    provider = SimulatedProvider(count=1, node="n", memory_bytes=1000)
    uuid = provider.devices()[0].uuid
    provider.set_load(uuid, 30.0, memory_used_bytes=500, processes={42: 300, 7: 200})
    [sample] = provider.sample()
    assert [(p.pid, p.memory_used_bytes) for p in sample.processes] == [(7, 200), (42, 300)]
    with pytest.raises(ValueError, match="0 bytes or more"):
        provider.set_load(uuid, 30.0, processes={1: -5})


def test_the_load_file_pins_gpus_and_is_reread_when_it_changes(tmp_path: Path) -> None:
    load = tmp_path / "load.json"
    provider = SimulatedProvider(count=2, node="n", memory_bytes=1000, load_file=str(load))
    first, second = (d.uuid for d in provider.devices())
    # no file yet: the simulation runs
    assert provider.sample()
    load.write_text(
        json.dumps(
            {
                "0": {"utilization_percent": 0, "memory_used_bytes": 10},
                second: {"utilization_percent": 77, "processes": {"4242": 99}},
            }
        )
    )
    by_uuid = {s.uuid: s for s in provider.sample()}
    assert (by_uuid[first].utilization_percent, by_uuid[first].memory_used_bytes) == (0.0, 10)
    assert by_uuid[second].utilization_percent == 77.0
    assert [(p.pid, p.memory_used_bytes) for p in by_uuid[second].processes] == [(4242, 99)]

    # set_load wins over the file for the GPU it pins
    provider.set_load(first, 55.0)
    assert {s.uuid: s for s in provider.sample()}[first].utilization_percent == 55.0
    provider.clear_load(first)

    # a broken file keeps the last good pins; a fixed one applies
    load.write_text("{not json")
    assert {s.uuid: s for s in provider.sample()}[second].utilization_percent == 77.0
    load.write_text(json.dumps({"1": {"utilization_percent": 12.5}}))
    by_uuid = {s.uuid: s for s in provider.sample()}
    assert by_uuid[second].utilization_percent == 12.5

    # an unknown GPU or a bad value is ignored as a whole, like a broken file
    load.write_text(json.dumps({"9": {"utilization_percent": 1}}))
    assert {s.uuid: s for s in provider.sample()}[second].utilization_percent == 12.5
    load.unlink()
    assert all(not s.processes for s in provider.sample())
