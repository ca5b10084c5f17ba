"""Scheduling through a real server: the policy from traitlets and through the API, priority
classes and fair share ordering the queue, quotas, estimated starts, and config mistakes.

Kernels are registered in the ledger only (no process is needed to ask for GPUs); other users act
through their kernel's token, as ``%gpu`` does. The ledger schedules within the call that changes
it (a request, a release, a new policy), so each answer already shows the outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from server_kit import register
from traitlets import TraitError
from traitlets.config import Config

from jupyter_dlinfra.server.app import DLInfra
from jupyter_dlinfra.server.handlers.base import KERNEL_AUTH_SCHEME

Api = Callable[..., Awaitable[tuple[int, Any]]]

#: the server's owner, alice, is an admin and in the group "ml"
ADMIN = {
    "simulated_gpus": 4,
    "user_name": "alice",
    "admin_users": ["alice"],
    "user_groups": {"alice": ["ml"]},
    "unix_groups": False,
}
DEFAULT_CLASSES = {
    "interactive": {"priority": 100, "preemptible": False},
    "batch": {"priority": 50, "preemptible": True},
    "low": {"priority": 10, "preemptible": True},
}


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return dict(ADMIN)


def _token(token: str) -> dict[str, str]:
    return {"Authorization": f"{KERNEL_AUTH_SCHEME} {token}"}


async def _ask(api: Api, kernel_id: str, count: int, **extra: Any) -> dict[str, Any]:
    """A request for GPUs made by the server's owner (an admin may ask for anyone's kernel)."""
    status, alloc = await api(
        "POST", "allocations", {"kernel_id": kernel_id, "count": count, **extra}
    )
    assert status == 201, alloc
    return alloc  # type: ignore[no-any-return]


async def _ask_as(api: Api, token: str, count: int, **extra: Any) -> dict[str, Any]:
    """A request made with a kernel's own token, as ``%gpu`` makes it."""
    status, alloc = await api(
        "POST", "allocations", {"count": count, **extra}, headers=_token(token)
    )
    assert status == 201, alloc
    return alloc  # type: ignore[no-any-return]


async def _get(api: Api, alloc: dict[str, Any]) -> dict[str, Any]:
    status, found = await api("GET", f"allocations/{alloc['id']}")
    assert status == 200, found
    return found  # type: ignore[no-any-return]


async def _release(api: Api, alloc: dict[str, Any]) -> None:
    status, body = await api("DELETE", f"allocations/{alloc['id']}")
    assert status == 204, body


async def _put(api: Api, body: Any, **kwargs: Any) -> tuple[int, Any]:
    return await api("PUT", "scheduling", raw=json.dumps(body), **kwargs)


def _when(stamp: str) -> datetime:
    """An answer's timestamp (ISO 8601 in UTC, ``Z``), checked to be one."""
    assert isinstance(stamp, str) and stamp.endswith("Z"), stamp
    parsed = datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")
    assert parsed.utcoffset() == timedelta(0)
    return parsed


# -- the policy: from configuration, changed by admins ------------------------------------------

CONFIGURED = {
    **ADMIN,
    "priority_classes": {
        "interactive": {"priority": 100},
        "batch": {"priority": 50, "preemptible": True},
        "night": {"priority": 5, "preemptible": True},
    },
    "job_class": "night",
    "fair_share_half_life": 3600.0,
    "default_share": 2.0,
    "user_shares": {"bob": 4},
    "group_shares": {"ml": 3},
    "default_user_quota": 3,
    "user_quotas": {"bob": 1},
    "group_quotas": {"ml": 2},
    "quota_borrowing": False,
    "preemption": False,
    "reservations": 2,
    "starvation_limit": 0.0,
}


@pytest.mark.parametrize("dlinfra_config", [CONFIGURED])
async def test_the_configured_policy_is_shown_and_in_force(
    api: Api, dlinfra_app: Any, dlinfra_config: dict[str, Any]
) -> None:
    status, view = await api("GET", "scheduling")
    assert status == 200, view
    assert view["source"] == "config" and view["editable"] is True
    assert view["updated_at"] is None and view["updated_by"] is None and view["changes"] == []
    assert view["policy"] == {
        "classes": {
            "interactive": {"priority": 100, "preemptible": False},
            "batch": {"priority": 50, "preemptible": True},
            "night": {"priority": 5, "preemptible": True},
        },
        "kernel_class": "interactive",
        "job_class": "night",
        "fair_share": True,
        "half_life": 3600.0,
        "default_share": 2.0,
        "user_shares": {"bob": 4.0},
        "group_shares": {"ml": 3.0},
        "default_user_quota": 3,
        "user_quotas": {"bob": 1},
        "group_quotas": {"ml": 2},
        "borrowing": False,
        "preemption": False,
        "reservations": 2,
        "starvation_limit": 0.0,
    }
    assert view["configured"] == view["policy"]

    # in force: alice (of group "ml", quota 2) may not take 3 GPUs, though all 4 are free
    register(dlinfra_app, "k")
    alloc = await _ask(api, "k", 3)
    assert alloc["state"] == "queued" and alloc["waiting_code"] == "quota", alloc
    assert alloc["waiting_reason"] == "group ml holds 0 GPU(s) of a quota of 2"
    assert alloc["priority_class"] == "interactive" and alloc["kind"] == "kernel"
    status, fair = await api("GET", "fairshare")
    assert status == 200 and fair["quota"] == 3 and fair["half_life"] == 3600.0


async def test_an_admin_changes_the_policy_and_the_queue_follows_it_at_once(
    api: Api, dlinfra_app: Any
) -> None:
    _, before = await api("GET", "scheduling")
    assert before["source"] == "config" and before["policy"]["user_quotas"] == {}

    # a partial document: the other fields keep their values
    status, view = await _put(api, {"user_quotas": {"alice": 1}})
    assert status == 200, view
    assert view["policy"] == {**before["policy"], "user_quotas": {"alice": 1}}
    assert view["configured"] == before["configured"]
    assert view["source"] == "api" and view["updated_by"] == "alice"
    _when(view["updated_at"])
    assert [(c["field"], c["who"], c["old"], c["new"]) for c in view["changes"]] == [
        ("user_quotas.alice", "alice", None, 1)
    ]

    # the next request is scheduled under it: 3 GPUs are free, but alice's quota is 1
    for kernel_id in ("k1", "k2"):
        register(dlinfra_app, kernel_id)
    held = await _ask(api, "k1", 1)
    assert held["state"] == "granted"
    over = await _ask(api, "k2", 1)
    assert over["state"] == "queued" and over["position"] == 1
    assert over["waiting_code"] == "quota"
    assert over["waiting_reason"] == "alice holds 1 GPU(s) of a quota of 1"
    _, cluster = await api("GET", "cluster")
    assert cluster["free_count"] == 3
    _, fair = await api("GET", "fairshare")
    assert fair["quota"] == 1

    # lifting the quota grants the waiting request within the same call
    status, view = await _put(api, {"user_quotas": {}, "fair_share": False})
    assert status == 200, view
    assert view["policy"]["user_quotas"] == {} and view["policy"]["fair_share"] is False
    assert (await _get(api, over))["state"] == "granted"
    changes = [(c["field"], c["who"], c["old"], c["new"]) for c in view["changes"]]
    assert sorted(changes[:2]) == [
        ("fair_share", "alice", True, False),
        ("user_quotas.alice", "alice", 1, None),
    ]
    assert changes[2:] == [("user_quotas.alice", "alice", None, 1)]
    seqs = [c["seq"] for c in view["changes"]]
    assert seqs == sorted(seqs, reverse=True), "newest first"
    stamps = [_when(c["at"]) for c in view["changes"]]
    assert stamps == sorted(stamps, reverse=True)

    # a whole new set of classes, audited class by class; requests may name the new ones
    classes = {"urgent": {"priority": 200}, "interactive": {"priority": 100}}
    status, view = await _put(api, {"classes": classes, "job_class": "interactive"})
    assert status == 200, view
    assert view["policy"]["classes"] == {
        "urgent": {"priority": 200, "preemptible": False},
        "interactive": {"priority": 100, "preemptible": False},
    }
    latest = {c["field"]: (c["old"], c["new"]) for c in view["changes"][:7]}
    assert latest == {
        "classes.urgent.priority": (None, 200),
        "classes.urgent.preemptible": (None, False),
        "classes.batch.priority": (50, None),
        "classes.batch.preemptible": (True, None),
        "classes.low.priority": (10, None),
        "classes.low.preemptible": (True, None),
        "job_class": ("batch", "interactive"),
    }
    register(dlinfra_app, "k3")
    urgent = await _ask(api, "k3", 1, priority_class="urgent")
    assert urgent["state"] == "granted" and urgent["priority_class"] == "urgent"


async def test_people_who_are_not_admins_cannot_change_the_policy(
    api: Api, dlinfra_app: Any
) -> None:
    register(dlinfra_app, "alices-kernel", token="alices-token")
    for headers in ({}, _token("alices-token")):
        status, view = await api("GET", "scheduling", headers=headers)
        assert status == 200 and view["editable"] is (not headers), headers
    # alice is an admin, but her kernel's token never is one
    status, err = await _put(api, {"fair_share": False}, headers=_token("alices-token"))
    assert status == 403 and err["reason"] == "not_admin", err
    _, view = await api("GET", "scheduling")
    assert view["source"] == "config" and view["policy"]["fair_share"] is True


@pytest.mark.parametrize("dlinfra_config", [{"simulated_gpus": 2, "user_name": "bob"}])
async def test_a_server_without_admins_refuses_changes(
    api: Api, dlinfra_config: dict[str, Any]
) -> None:
    status, view = await api("GET", "scheduling")
    assert status == 200 and view["editable"] is False
    status, err = await _put(api, {"fair_share": False})
    assert status == 403 and err["reason"] == "not_admin"
    assert "c.DLInfra.admin_users" in err["message"]
    status, fair = await api("GET", "fairshare")
    assert status == 200 and fair["user"] == "bob" and fair["users"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"classes": {"x": {"priority": "high"}}}, "classes.x.priority"),
        ({"classes": {"x": {"priority": 1.5}}}, "classes.x.priority"),
        ({"classes": {"x": {"priority": 1, "weight": 2}}}, "classes.x.weight"),
        ({"classes": {"only": {"priority": 1}}}, "kernel_class"),
        ({"user_quotas": {"bob": -1}}, "user_quotas.bob"),
        ({"user_quotas": {"bob": 1.5}}, "user_quotas.bob"),
        ({"user_shares": {"bob": 0}}, "user_shares.bob"),
        ({"kernel_class": "batch"}, "kernel_class"),
        ({"job_class": "gold"}, "job_class"),
        ({"half_life": 0}, "half_life"),
        ({"fair_share": "yes"}, "fair_share"),
        ({"default_user_quota": -2}, "default_user_quota"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_a_bad_value_is_refused_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    status, err = await _put(api, body)
    assert status == 400, err
    assert err["reason"] == "bad_policy" and err["message"].startswith(f"{field}: "), err
    _, view = await api("GET", "scheduling")
    assert view["source"] == "config" and view["changes"] == [], "nothing was stored"


async def test_the_kernel_class_message_says_why(api: Api) -> None:
    status, err = await _put(api, {"kernel_class": "low"})
    assert status == 400 and err["message"] == (
        "kernel_class: kernels are never preempted: their class must have preemptible false"
    )
    status, err = await _put(api, [1])
    assert status == 400 and err["reason"] == "bad_json"


# -- priority classes on requests ---------------------------------------------------------------


async def test_a_request_names_its_class(api: Api, dlinfra_app: Any) -> None:
    register(dlinfra_app, "k")
    status, err = await api(
        "POST", "allocations", {"kernel_id": "k", "count": 1, "priority_class": "gold"}
    )
    assert status == 400 and err["reason"] == "unknown_class", err
    assert err["message"] == "unknown priority class 'gold'; classes: interactive, batch, low"
    status, err = await api(
        "POST", "allocations", {"kernel_id": "k", "count": 1, "priority_class": ["batch"]}
    )
    assert status == 400 and err["reason"] == "bad_field"
    _, listed = await api("GET", "allocations", params={"state": "all"})
    assert listed["allocations"] == [], "a refused request records nothing"

    alloc = await _ask(api, "k", 1, priority_class="batch")
    assert alloc["state"] == "granted" and alloc["priority_class"] == "batch"
    assert alloc["kind"] == "kernel" and alloc["borrowed"] is False
    assert alloc["waiting_code"] is None and alloc["estimated_start"] is None
    assert alloc["preempted_for"] is None and alloc["preempt_reason"] is None
    assert (await _get(api, alloc))["priority_class"] == "batch"
    # the same request again is the same allocation; another class is another request
    again = await _ask(api, "k", 1, priority_class="batch")
    assert again["id"] == alloc["id"]
    status, err = await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    assert status == 409 and err["reason"] == "already_allocated", err

    # without a class, a kernel's request is in the policy's kernel class
    register(dlinfra_app, "plain")
    plain = await _ask(api, "plain", 1)
    assert plain["priority_class"] == "interactive"


async def test_a_waiting_interactive_request_goes_before_an_earlier_batch_one(
    api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    node = app.service.settings.node
    register(app, "hold-1")
    register(app, "hold-3")
    register(app, "bobs", user="bob", token="bob-token")
    register(app, "carols", user="carol", token="carol-token")
    one = await _ask(api, "hold-1", 1)
    three = await _ask(api, "hold-3", 3)

    batch = await _ask_as(api, "bob-token", 1, priority_class="batch")
    interactive = await _ask_as(api, "carol-token", 2)
    assert batch["priority_class"] == "batch" and interactive["priority_class"] == "interactive"
    # no GPU is free: both wait for GPUs, the interactive one first though it came later
    batch, interactive = await _get(api, batch), await _get(api, interactive)
    assert (interactive["position"], batch["position"]) == (1, 2)
    assert interactive["waiting_code"] == batch["waiting_code"] == "no_free_gpu"
    assert batch["waiting_reason"] == f"waiting for 1 GPU on {node}: 0 of 4 free; held by alice (4)"

    # one GPU comes free: too few for the interactive request, which keeps it for itself, so
    # the batch request that would fit waits for it, for the reason "priority"
    await _release(api, one)
    batch, interactive = await _get(api, batch), await _get(api, interactive)
    assert batch["state"] == interactive["state"] == "queued"
    assert (interactive["position"], batch["position"]) == (1, 2)
    assert interactive["waiting_code"] == "no_free_gpu"
    assert interactive["waiting_reason"] == (
        f"waiting for 2 GPUs on {node}: 1 of 4 free; held by alice (3)"
    )
    assert batch["waiting_code"] == "priority"
    assert batch["waiting_reason"] == (
        f"waiting for 1 GPU on {node}: 1 of 4 free; "
        "1 kept for higher-priority requests (interactive); held by alice (3)"
    )
    _, cluster = await api("GET", "cluster")
    assert cluster["free_count"] == 1

    # all free: the interactive request gets its two, then the batch one its one
    await _release(api, three)
    batch, interactive = await _get(api, batch), await _get(api, interactive)
    assert interactive["state"] == batch["state"] == "granted"
    assert _when(interactive["granted_at"]) <= _when(batch["granted_at"])


# -- fair share ---------------------------------------------------------------------------------


async def test_fair_share_serves_the_user_with_less_recent_use_first(
    api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    node = app.service.settings.node
    register(app, "hold-1")
    register(app, "hold-3")
    register(app, "bobs-first", user="bob", token="bob-first")
    register(app, "bobs", user="bob", token="bob-token")
    register(app, "carols", user="carol", token="carol-token")

    status, fair = await api("GET", "fairshare", headers=_token("bob-token"))
    assert status == 200 and fair["user"] == "bob" and fair["you"] is None
    # bob uses a GPU, then gives it back: that use is recorded at the release
    await _release(api, await _ask_as(api, "bob-first", 1))
    status, fair = await api("GET", "fairshare", headers=_token("bob-token"))
    assert status == 200 and fair["users"] is None, "a kernel's token is never an admin"
    assert fair["you"]["user"] == "bob" and fair["you"]["held"] == 0
    assert 0 < fair["you"]["factor"] < 1 and fair["you"]["rank"] is None
    assert fair["fair_share"] is True and fair["quota"] is None

    one = await _ask(api, "hold-1", 1)
    three = await _ask(api, "hold-3", 3)
    bobs = await _ask_as(api, "bob-token", 1)
    carols = await _ask_as(api, "carol-token", 2)
    bobs, carols = await _get(api, bobs), await _get(api, carols)
    assert bobs["priority_class"] == carols["priority_class"] == "interactive"
    assert (carols["position"], bobs["position"]) == (1, 2), "carol has no recent use"
    assert carols["waiting_code"] == bobs["waiting_code"] == "no_free_gpu"

    _, fair = await api("GET", "fairshare")
    assert fair["user"] == "alice" and fair["you"]["held"] == 4
    standings = {s["user"]: s for s in fair["users"]}
    assert set(standings) == {"alice", "bob", "carol"}
    assert (standings["carol"]["rank"], standings["bob"]["rank"]) == (1, 2)
    assert standings["alice"]["rank"] is None, "alice has nothing waiting"
    assert standings["carol"]["factor"] == 1.0 and standings["bob"]["factor"] < 1.0
    assert standings["bob"]["usage_gpu_hours"] >= 0 and standings["carol"]["usage_gpu_hours"] == 0

    # one GPU comes free: carol needs two and keeps it, bob's smaller request waits behind her
    await _release(api, one)
    bobs, carols = await _get(api, bobs), await _get(api, carols)
    assert bobs["state"] == carols["state"] == "queued"
    assert bobs["waiting_code"] == "fair_share"
    assert bobs["waiting_reason"] == (
        f"waiting for 1 GPU on {node}: 1 of 4 free; "
        "1 kept for users with less recent GPU use (carol); held by alice (3)"
    )

    # first come, first served once fair share is off: bob's request is granted at once
    status, view = await _put(api, {"fair_share": False})
    assert status == 200, view
    bobs, carols = await _get(api, bobs), await _get(api, carols)
    assert bobs["state"] == "granted" and carols["state"] == "queued"
    assert carols["position"] == 1 and carols["waiting_code"] == "no_free_gpu"
    await _release(api, three)
    assert (await _get(api, carols))["state"] == "granted"


async def test_the_queue_lists_requests_in_the_order_they_are_served(
    api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    register(app, "hold")
    register(app, "bobs", user="bob", token="bob-token")
    register(app, "carols", user="carol", token="carol-token")
    await _ask(api, "hold", 4)
    await _ask_as(api, "bob-token", 1, priority_class="low")
    await _ask_as(api, "carol-token", 1)
    _, queue = await api("GET", "queue")
    positions = [a["position"] for a in queue["queue"]]
    assert sorted(positions) == [1, 2]
    assert positions == [1, 2], [(a["user"], a["position"]) for a in queue["queue"]]


# -- estimated starts ---------------------------------------------------------------------------


async def test_estimated_starts_follow_the_typical_holding_time(api: Api, dlinfra_app: Any) -> None:
    for kernel_id in ("holder", "waiter", "holder-2", "waiter-2"):
        register(dlinfra_app, kernel_id)

    # no history: a holding is expected to last the default hour
    holder = await _ask(api, "holder", 4)
    waiter = await _ask(api, "waiter", 2)
    assert waiter["state"] == "queued" and holder["estimated_start"] is None
    expected = _when(holder["granted_at"]) + timedelta(hours=1)
    assert abs(_when(waiter["estimated_start"]) - expected) < timedelta(milliseconds=1)
    _, queue = await api("GET", "queue")
    assert [a["estimated_start"] for a in queue["queue"]] == [waiter["estimated_start"]]

    # the holder gives its GPUs back soon: the waiter is granted, its estimate gone
    await _release(api, holder)
    waiter = await _get(api, waiter)
    assert waiter["state"] == "granted" and waiter["estimated_start"] is None
    await _release(api, waiter)

    # with that history, a grant is expected to end soon: the estimate is the ledger's
    # shortest horizon (a minute from when it is asked), well before the default hour
    holder = await _ask(api, "holder-2", 4)
    waiter = await _ask(api, "waiter-2", 1)
    assert waiter["state"] == "queued"
    start = _when(waiter["estimated_start"])
    assert start >= _when(waiter["created_at"]) + timedelta(seconds=60)
    assert start < _when(holder["granted_at"]) + timedelta(hours=1)
    await _release(api, waiter)
    assert (await _get(api, waiter))["estimated_start"] is None


# -- configuration mistakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user_quotas": {"bob": -1}}, "DLInfra.user_quotas.bob: must be 0 or more, not -1"),
        ({"group_quotas": {"ml": "two"}}, "DLInfra.group_quotas.ml: must be a whole number"),
        (
            {"priority_classes": {"interactive": {"priority": "high"}}},
            "DLInfra.priority_classes.interactive.priority: must be a whole number, not 'high'",
        ),
        (
            {"priority_classes": {"interactive": {"priority": 1.5}}},
            "DLInfra.priority_classes.interactive.priority: must be a whole number, not 1.5",
        ),
        (
            {"priority_classes": {"interactive": {"priority": 1, "preemptible": "no"}}},
            "DLInfra.priority_classes.interactive.preemptible: must be true or false",
        ),
        ({"kernel_class": "batch"}, "DLInfra.kernel_class: kernels are never preempted"),
        ({"job_class": "gold"}, "DLInfra.job_class: 'gold' is not a class"),
        ({"fair_share_half_life": 0.0}, "DLInfra.fair_share_half_life: must be more than 0"),
        ({"user_shares": {"bob": 0}}, "DLInfra.user_shares.bob: must be more than 0"),
        ({"default_user_quota": -1}, "DLInfra.default_user_quota: must be 0 or more"),
        ({"reservations": -1}, "DLInfra.reservations: must be 0 or more"),
        ({"starvation_limit": -5.0}, "DLInfra.starvation_limit: must be 0 or more"),
    ],
)
def test_a_config_mistake_names_the_option(options: dict[str, Any], message: str) -> None:
    app = DLInfra(config=Config({"DLInfra": options}))
    with pytest.raises(TraitError) as raised:
        app.configured_scheduling()
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_configured_defaults_are_the_documented_ones() -> None:
    policy = DLInfra(config=Config()).configured_scheduling().to_json()
    assert policy["classes"] == DEFAULT_CLASSES
    assert (policy["kernel_class"], policy["job_class"]) == ("interactive", "batch")
    assert policy["half_life"] == 7 * 86400 and policy["starvation_limit"] == 86400
    assert policy["default_user_quota"] is None and policy["reservations"] == 16


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user_quotas": {"bob": -1}}, "DLInfra.user_quotas.bob: must be 0 or more, not -1"),
        (
            {"priority_classes": {"interactive": {"priority": "high"}}},
            "DLInfra.priority_classes.interactive.priority: must be a whole number",
        ),
    ],
)
def test_a_config_mistake_stops_the_extension_from_loading(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """A real ``jupyter server`` process, told to fail when an extension does not load."""
    config = {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_dlinfra": True},
            "reraise_server_extension_failures": True,
            "open_browser": False,
            "allow_root": True,
            "root_dir": str(tmp_path),
        },
        "DLInfra": {
            "db_url": f"sqlite:///{tmp_path}/ledger.sqlite",
            "simulated_gpus": 2,
            "telemetry_interval": 0,
            **options,
        },
    }
    config_file = tmp_path / "jupyter_server_config.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_server", f"--config={config_file}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, done.stderr[-2000:]
    assert message in done.stderr, done.stderr[-2000:]
    assert "jupyter_dlinfra | extension was successfully loaded" not in done.stderr
