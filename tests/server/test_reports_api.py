"""GET /dlinfra/api/reports/usage through a real server: who may see what, the JSON and the CSV,
and bad questions answered with a 400 that says how to ask."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from server_kit import register
from sqlalchemy import select
from tornado.httpclient import HTTPClientError

from jupyter_dlinfra.cli import main
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.reports import ReportRow, UsageReport
from jupyter_dlinfra.core.books.usage_hours import UsageHours
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.core.store import usage_hours
from jupyter_dlinfra.server.report_views import report_csv, report_json

Api = Callable[..., Awaitable[tuple[int, Any]]]

H = 3600.0


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {"simulated_gpus": 4, "user_name": "alice"}


def _history(app: Any) -> None:
    """alice and bob each held 2 GPUs for an hour, alice's from four hours ago, bob's then:
    made through a ledger of their own on the server's store, with a clock in the past (bob's
    ends two hours ago: its last hour has settled, see usage_hours.SETTLE_S, whatever the
    minute the test runs at)."""
    service = app.service
    past = Ledger(service.ledger.store, ManualClock(time.time() - 4 * H))
    for who in ("alice", "bob"):
        past.register_kernel(
            KernelRecord(
                kernel_id=f"k-{who}",
                user=who,
                node=service.settings.node,
                server_id=service.settings.server_id,
            )
        )
    alice = past.request(kernel_id="k-alice", count=2)
    past.clock.advance(H)  # type: ignore[attr-defined]
    past.release(alice.id, reason="released by the user")
    bob = past.request(kernel_id="k-bob", count=2)
    past.clock.advance(H)  # type: ignore[attr-defined]
    past.release(bob.id, reason="released by the user")


async def test_a_person_sees_their_own_usage_and_not_anyone_elses(
    api: Api, dlinfra_app: Any
) -> None:
    _history(dlinfra_app)
    status, report = await api("GET", "reports/usage?since=1d&step=hour")
    assert status == 200, report
    assert report["user"] == "alice"
    assert [r["key"] for r in report["rows"]] == ["alice"]
    assert report["rows"][0]["gpu_hours"] == pytest.approx(2.0, abs=0.01)
    assert report["total"]["gpu_hours"] == pytest.approx(2.0, abs=0.01)
    status, err = await api("GET", "reports/usage?user=bob")
    assert status == 403 and err["reason"] == "not_admin"
    assert "another person's usage" in err["message"]
    status, mine = await api("GET", "reports/usage?user=alice&by=node")
    assert status == 200 and [r["key"] for r in mine["rows"]] == [dlinfra_app.service.settings.node]


@pytest.mark.parametrize(
    "dlinfra_config", [{"simulated_gpus": 4, "user_name": "alice", "admin_users": ["alice"]}]
)
async def test_an_admin_sees_everyone_and_exports_csv(
    api: Api, dlinfra_app: Any, jp_fetch: Any, dlinfra_config: dict[str, Any]
) -> None:
    _history(dlinfra_app)
    status, report = await api("GET", "reports/usage?since=2d&by=user&step=day")
    assert status == 200
    assert sorted(r["key"] for r in report["rows"]) == ["alice", "bob"]
    assert report["total"]["gpu_hours"] == pytest.approx(4.0, abs=0.01)
    status, bob = await api("GET", "reports/usage?user=bob")
    assert status == 200 and [r["key"] for r in bob["rows"]] == ["bob"]
    resp = await jp_fetch(
        "dlinfra", "api", "reports", "usage", params={"format": "csv", "since": "2d"}
    )
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(resp.body.decode())))
    assert [r["user"] for r in table][-1] == "(total)"
    assert {r["user"] for r in table[:-1]} == {"alice", "bob"}
    assert float(table[-1]["gpu_hours"]) == pytest.approx(4.0, abs=0.01)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("by=team", "by must be one of"),
        ("step=week", "step must be one of"),
        ("format=xml", "format must be json or csv"),
        ("since=yesterday", "is not a time"),
        ("since=2026-13-45", "is not a time"),
        ("since=1e400", "is not a time"),
        ("since=1d&until=2d", "since must come before until"),
        ("since=1000w", "400 days at most"),
        ("since=90d&step=hour", "ask for step=day"),
        ("user=" + "x" * 300, "user"),
    ],
)
async def test_bad_questions_get_a_400_that_says_how_to_ask(
    api: Api, query: str, words: str
) -> None:
    status, err = await api("GET", f"reports/usage?{query}")
    assert status == 400, err
    assert words in err["message"]


async def test_a_kernel_token_sees_its_owners_usage_only(
    api: Api, dlinfra_app: Any, jp_fetch: Any
) -> None:
    register(dlinfra_app, "k-1", user="alice", token="kernel-secret")
    headers = {"Authorization": "DLInfra-Kernel kernel-secret"}
    status, report = await api("GET", "reports/usage", headers=headers)
    assert status == 200 and report["user"] == "alice"
    status, err = await api("GET", "reports/usage?user=bob", headers=headers)
    assert status == 403 and err["reason"] == "not_admin"
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("dlinfra", "api", "reports", "usage", headers={"Authorization": ""})
    assert refused.value.code in (401, 403)


def test_the_views_round_and_name_every_figure() -> None:
    row = ReportRow(key="carol", held_s=86 * H, observed_s=86 * H, busy_s=68 * H)
    row.waits.extend([10200.0, 60.0, 7.0])
    row.jobs["failed"] += 1
    row.add(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    hostile = ReportRow(key="=HYPERLINK(evil)", held_s=H)
    total = ReportRow(key="(total)", held_s=87 * H, busy_s=68 * H)
    report = UsageReport(
        since=0.0,
        until=86400.0,
        by="user",
        step="day",
        starts=[0.0],
        rows=[row, hostile],
        total=total,
    )
    body = report_json(report)
    carol = body["rows"][0]
    assert carol["gpu_hours"] == 86.0 and carol["efficiency"] == round(68 / 86, 4)
    assert carol["wait_p50_s"] == 60 and carol["wait_p95_s"] == 10200 and carol["grants"] == 3
    assert carol["jobs_failed"] == 1 and carol["jobs_succeeded"] == 0
    assert carol["series"] == [
        {
            "start": "1970-01-01T00:00:00Z",
            "gpu_hours": 0.0,
            "busy_gpu_hours": 0.0,
            "idle_gpu_hours": 0.0,
        }
    ]
    assert body["rows"][1]["wait_p50_s"] is None and body["rows"][1]["efficiency"] == 0.0
    assert body["since"] == "1970-01-01T00:00:00Z"
    lines = list(csv.reader(io.StringIO(report_csv(report))))
    assert lines[0][:3] == ["user", "gpu_hours", "busy_gpu_hours"]
    assert lines[2][0] == "'=HYPERLINK(evil)"  # never a formula in a spreadsheet
    assert lines[-1][0] == "(total)"


async def test_the_command_line_prints_the_report_and_its_csv(
    dlinfra_app: Any,
    jp_serverapp: Any,
    jp_http_port: int,
    jp_base_url: str,
    jp_fetch: Any,  # serves the app on jp_http_port
    capsys: pytest.CaptureFixture[str],
) -> None:
    _history(dlinfra_app)
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    server = ["--url", url, "--token", jp_serverapp.identity_provider.token]
    code = await asyncio.to_thread(main, [*server, "report", "--since", "1d"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("GPU usage by user, alice's")
    assert lines[2].split()[:3] == ["alice", "2.0", "0.0"]  # 2 GPU-hours, none sampled busy
    assert lines[-1].startswith("(total)")
    code = await asyncio.to_thread(main, [*server, "report", "--csv", "--by", "node"])
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and [r["node"] for r in table] == [
        dlinfra_app.service.settings.node,
        "(total)",
    ]
    code = await asyncio.to_thread(main, [*server, "report", "--user", "bob"])
    captured = capsys.readouterr()
    assert code == 2 and "only admins may see another person's usage" in captured.err


async def test_the_servers_roll_up_keeps_the_report_as_it_was(api: Api, dlinfra_app: Any) -> None:
    _history(dlinfra_app)
    status, before = await api("GET", "reports/usage?since=1d&step=hour")
    reclaimer = dlinfra_app.service.reclaimer
    await dlinfra_app.service.call(reclaimer._roll_up_hours)
    with dlinfra_app.service.ledger.store.read() as conn:
        rolled = conn.execute(select(usage_hours.c.user, usage_hours.c.held_s)).all()
        until = UsageHours(dlinfra_app.service.ledger.store).rolled_until(conn)
    # each grant of an hour falls in two clock hours (one, if it began on the hour)
    assert {u for u, _ in rolled} == {"alice", "bob"} and 2 <= len(rolled) <= 4
    assert sum(s for _, s in rolled) == pytest.approx(4 * H, abs=1.0)
    assert until * H <= time.time() - 600  # only hours that ended ten minutes ago or more
    status, after = await api("GET", "reports/usage?since=1d&step=hour")
    assert status == 200 and after["rows"] == before["rows"]
