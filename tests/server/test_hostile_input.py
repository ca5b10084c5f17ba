"""Hostile input gets a 4xx JSON answer a person can act on, never a 500, and never echoes itself.

Each sample here answered 500 (or worse) before: ids beyond 64 bits, ids in non-ASCII digits (one
even found allocation 1), JSON nested thousands deep, integers of hundreds of digits, a 10 MB
kernel id echoed whole in the answer and in the log, and a scheduling policy at the edge of the
float range that was accepted and then made every release fail.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from server_kit import register

from jupyter_dlinfra.testing.server import write_notebook

BEYOND_64_BITS = "9" * 25
ARABIC_INDIC_ONE = "\u0661"  # int() and str.isdigit() take it for 1
DEEP = "[" * 100_000
#: the most of a caller's input an answer or a log line may carry
SHORT = 2000


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {"simulated_gpus": 4, "user_name": "alice", "admin_users": ["alice"]}


def _client_error(status: int, body: Any, reason: str | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and set(body) >= {"message", "reason"}, body
    assert len(body["message"]) < SHORT, "the answer quotes the input short"
    if reason is not None:
        assert body["reason"] == reason, body


async def _granted(api: Any, app: Any, kernel_id: str = "k1") -> dict[str, Any]:
    register(app, kernel_id)
    status, alloc = await api("POST", "allocations", {"kernel_id": kernel_id, "count": 1})
    assert status == 201 and alloc["state"] == "granted", alloc
    return alloc  # type: ignore[no-any-return]


# -- ids in paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_an_allocation_id_beyond_64_bits_is_a_bad_id(api: Any, method: str) -> None:
    status, body = await api(method, f"allocations/{BEYOND_64_BITS}")
    _client_error(status, body, "bad_id")


async def test_a_notice_id_beyond_64_bits_is_a_bad_id(api: Any) -> None:
    status, body = await api("POST", f"notices/{BEYOND_64_BITS}/actions/keep", {})
    _client_error(status, body, "bad_id")


async def test_ids_in_other_digits_than_ascii_are_bad_ids(api: Any, dlinfra_app: Any) -> None:
    alloc = await _granted(api, dlinfra_app)
    assert alloc["id"] == 1
    status, body = await api("GET", f"allocations/{ARABIC_INDIC_ONE}")
    _client_error(status, body, "bad_id")
    status, body = await api("DELETE", f"allocations/{ARABIC_INDIC_ONE}")
    _client_error(status, body, "bad_id")
    status, body = await api("POST", f"notices/{ARABIC_INDIC_ONE}/actions/keep", {})
    _client_error(status, body, "bad_id")
    status, still = await api("GET", "allocations/1")
    assert status == 200 and still["state"] == "granted"


# -- bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "allocations"),
        ("PUT", "scheduling"),
        ("PUT", "policy"),
        ("POST", "policy/simulate"),
        ("POST", "jobs"),
        ("POST", "kernels/k1/keep"),
    ],
)
async def test_json_nested_thousands_deep_is_bad_json(
    api: Any, dlinfra_app: Any, method: str, path: str
) -> None:
    register(dlinfra_app, "k1")
    status, body = await api(method, path, raw=DEEP)
    _client_error(status, body, "bad_json")
    status, body = await api(method, path, raw='{"a": ' * 5000 + "1" + "}" * 5000)
    _client_error(status, body, "bad_json")


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "allocations", '{"kernel_id": "\\ud800", "count": 1}'),
        ("PUT", "scheduling", '{"user_shares": {"\\udfff": 1}}'),
    ],
)
async def test_unpaired_surrogates_are_bad_json(api: Any, method: str, path: str, raw: str) -> None:
    """Valid JSON, but no string the database or an encoder takes."""
    status, body = await api(method, path, raw=raw)
    _client_error(status, body, "bad_json")


async def test_job_after_ids_beyond_64_bits_are_refused(api: Any, jp_root_dir: Path) -> None:
    write_notebook(jp_root_dir / "nb.ipynb", "print(1)")
    for after in (2**64, [2**70, 1], [10**400]):
        status, body = await api("POST", "jobs", {"path": "nb.ipynb", "after": after})
        _client_error(status, body)
        assert body["reason"] in ("bad_json", "bad_field"), body


@pytest.mark.parametrize(
    "doc",
    [
        {"reclaim_after": 10**300},
        {"max_keeps": 10**300},
        {"keep_extension": 1e308},
        {"groups": {"ml": {"keep_extension": 10**400}}},
    ],
)
async def test_policy_numbers_of_hundreds_of_digits_are_refused(
    api: Any, doc: dict[str, Any]
) -> None:
    status, body = await api("PUT", "policy", doc)
    _client_error(status, body)
    assert body["reason"] in ("bad_json", "bad_policy"), body


# -- echoes and logs -----------------------------------------------------------------------------


async def test_a_10_mb_kernel_id_is_neither_echoed_nor_logged_whole(
    api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "k" * 10 * 2**20
    big = "q" * 2**20  # within the size a body may have: refused as a kernel id
    with caplog.at_level(logging.DEBUG):
        for body in (
            {"kernel_id": huge, "count": 1},
            {"kernel_id": big, "count": 1},
            {"kernel_id": "k", "count": 1, big: 1},
            {"kernel_id": "k", "count": 1, "priority_class": big},
        ):
            status, answer = await api("POST", "allocations", body)
            _client_error(status, answer)
        status, answer = await api("PUT", "scheduling", {"kernel_class": big})
        _client_error(status, answer, "bad_policy")
        # tornado takes URLs of up to 64 kB: one is logged as it came, but not echoed
        status, answer = await api("POST", f"kernels/{'p' * 20000}/keep", {})
        _client_error(status, answer)
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "k" * SHORT in m or "q" * SHORT in m]
    assert max(len(m) for m in said) < 20000 + SHORT


# -- the scheduling policy at the edge of the float range ----------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {"half_life": 1e308},
        {"half_life": 5e-324},
        {"default_share": 1e-320},
        {"user_shares": {"alice": 1.7e308}},
    ],
)
async def test_a_policy_at_the_float_edge_is_refused_and_releases_go_on(
    api: Any, dlinfra_app: Any, doc: dict[str, Any]
) -> None:
    alloc = await _granted(api, dlinfra_app)
    status, body = await api("PUT", "scheduling", doc)
    _client_error(status, body, "bad_policy")
    status, _ = await api("DELETE", f"allocations/{alloc['id']}")
    assert status == 204
    status, cluster = await api("GET", "cluster")
    assert cluster["free_count"] == 4
    status, fair = await api("GET", "fairshare")
    assert status == 200
    assert all(json.dumps(u, allow_nan=False) for u in fair["users"])


@pytest.mark.parametrize("kernel_id", ["p" * 20000, "k\x00", "k\n1"])
async def test_a_restart_of_a_kernel_id_the_spec_refuses_is_a_bad_id(
    api: Any, kernel_id: str
) -> None:
    status, answer = await api("POST", f"kernels/{kernel_id}/restart", {})
    _client_error(status, answer, "bad_id")
    assert len(answer["message"]) < SHORT * 4
