"""The admin console in a real JupyterLab: its tabs, the charts drawn by the Lab's own Vega-Lite
renderer, the People table sorted and a person's detail, a policy saved, and its history; a
screenshot of each tab in test-artifacts/."""

from __future__ import annotations

import getpass
import time
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.core.books.jobs import JobBook, JobState, NewJob
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.core.store import Store

from .conftest import ARTIFACTS
from .test_sidebar import open_console

HOUR = 3600.0


def _bobs_afternoon(server: Any) -> None:
    """bob held both GPUs for two hours, ending an hour ago: written to the ledger as his
    server would have, with a clock three hours back."""
    store = Store(server.db_url)
    try:
        past = Ledger(store, ManualClock(time.time() - 3 * HOUR))
        node = server.get("dlinfra/api/cluster")["nodes"][0]["name"]
        past.register_kernel(
            KernelRecord(kernel_id="k-bob", user="bob", node=node, server_id="elsewhere")
        )
        granted = past.request(kernel_id="k-bob", count=2)
        past.clock.advance(2 * HOUR)  # type: ignore[attr-defined]
        past.release(granted.id, reason="released by the user")
        jobs = JobBook(store, past.clock)
        job = jobs.create(
            NewJob(
                user="bob",
                name="sweep-lr",
                path="train.ipynb",
                backend="local",
                node=node,
                server_id="elsewhere",
            ),
            workdir_for=lambda i: f"/tmp/bob-job-{i}",
        )
        jobs.finish(job.id, JobState.SUCCEEDED, "finished")
    finally:
        store.dispose()


def test_the_console_shows_usage_charts_people_and_history(lab: Any, page: Any) -> None:
    me = getpass.getuser()
    server = lab(gpus=2, args=(f"--DLInfra.admin_users={me}",))
    _bobs_afternoon(server)
    mine = server.start_kernel()
    assert "Granted 1 GPU" in mine.execute("%gpu 1").stdout
    page.goto(f"{server.url}lab?token={server.token}")
    ARTIFACTS.mkdir(exist_ok=True)

    # Overview: the week's figures and three charts, drawn by the Lab's Vega-Lite renderer
    console = open_console(page, "Overview")
    overview = console.locator("#dlinfra-console-overview")
    expect(overview.locator("[data-figure='gpu_hours']")).to_contain_text("GPU-h", timeout=30_000)
    report = server.get("dlinfra/api/reports/usage?since=7d")
    assert report["total"]["gpu_hours"] >= 4.0, report  # bob's 2 GPUs x 2 h, and mine
    for chart in ("held-busy", "idle", "heatmap"):
        box = overview.locator(f".jp-DLInfra-chart[data-chart='{chart}']")
        expect(box.locator(".vega-embed")).to_have_count(1, timeout=30_000)
        expect(box.locator(".vega-embed canvas, .vega-embed svg").first).to_be_visible()
    heatmap = overview.locator(".jp-DLInfra-chart[data-chart='heatmap']")
    expect(heatmap).to_have_attribute("data-points", "2")  # one cell per GPU
    overview.screenshot(path=str(ARTIFACTS / "console-overview.png"))

    # People: sorted by GPU-hours (bob first), then the other way; a row opens its detail
    console.locator(".lm-TabBar-tab", has_text="People").click()
    people = console.locator("#dlinfra-console-people")
    rows = people.locator(".jp-DLInfra-personRow")
    expect(rows).to_have_count(2, timeout=30_000)
    expect(rows.first).to_have_attribute("data-user", "bob")
    people.locator(".jp-DLInfra-sortButton[data-sort='gpu_hours']").click()
    expect(rows.first).to_have_attribute("data-user", me)
    expect(people.locator("th[aria-sort='ascending']")).to_contain_text("GPU-h")
    people.locator(".jp-DLInfra-sortButton[data-sort='user']").click()
    expect(people.locator("th[aria-sort='ascending']")).to_contain_text("Person")
    # quota use: what each holds now against their quota (none configured here)
    expect(
        people.locator(f".jp-DLInfra-personRow[data-user='{me}'] td[data-column='held']")
    ).to_have_text("1 / no limit")
    expect(
        people.locator(".jp-DLInfra-personRow[data-user='bob'] td[data-column='held']")
    ).to_have_text("0 / no limit")
    people.locator(f".jp-DLInfra-personRow[data-user='{me}']").click()
    detail = people.locator(".jp-DLInfra-personDetail")
    expect(detail.locator("h3")).to_have_text(me)
    expect(detail.locator(".jp-DLInfra-personAllocations li")).to_have_count(1)
    expect(detail.locator(".jp-DLInfra-usageHint")).to_have_count(1)
    people.locator(".jp-DLInfra-personRow[data-user='bob']").click()
    expect(detail.locator("h3")).to_have_text("bob")
    expect(detail.locator(".jp-DLInfra-personJobs li[data-state='succeeded']")).to_contain_text(
        "sweep-lr: succeeded"
    )
    people.locator(f".jp-DLInfra-personRow[data-user='{me}']").click()
    expect(detail.locator("h3")).to_have_text(me)
    assert "format=csv" in (people.locator(".jp-DLInfra-consoleCsv").get_attribute("href") or "")
    people.screenshot(path=str(ARTIFACTS / "console-people.png"))

    # Policy: the reclaim form, saved; History: the change, with who made it
    console.locator(".lm-TabBar-tab", has_text="Policy").click()
    policy = page.locator("#dlinfra-admin")
    expect(policy.locator("input[name=warn_after]")).to_have_value("1800", timeout=30_000)
    policy.locator("input[name=warn_after]").fill("2400")
    policy.locator(".jp-DLInfra-policySave").click()
    expect(policy.locator("input[name=warn_after]")).to_have_value("2400")
    assert server.get("dlinfra/api/policy")["policy"]["warn_after"] == 2400
    # an override for bob, edited as a card: a reclaim before the warning is refused by the
    # server, which names the field; then saved
    policy.locator(".jp-DLInfra-overrideAdd").click()
    card = policy.locator(".jp-DLInfra-overrideCard").last
    card.locator(".jp-DLInfra-overrideName").fill("bob")
    card.locator("[data-field='reclaim_after']").fill("100")
    policy.locator(".jp-DLInfra-policySave").click()
    expect(policy.locator(".jp-DLInfra-policyError")).to_contain_text("users.bob.reclaim_after")
    expect(card.locator("[data-field='reclaim_after']")).to_have_attribute("aria-invalid", "true")
    card.locator("[data-field='reclaim_after']").fill("7200")
    policy.locator(".jp-DLInfra-policySave").click()
    expect(policy.locator(".jp-DLInfra-policyError")).to_be_hidden()
    saved = server.get("dlinfra/api/policy")["policy"]
    assert saved["users"] == {"bob": {"reclaim_after": 7200}}, saved
    policy.screenshot(path=str(ARTIFACTS / "console-policy.png"))

    console.locator(".lm-TabBar-tab", has_text="History").click()
    history = console.locator("#dlinfra-console-history")
    change = history.locator(".jp-DLInfra-historyRow[data-field='warn_after']")
    expect(change).to_have_count(1, timeout=30_000)
    expect(change.locator(".jp-DLInfra-historyNew")).to_have_text("2400")
    expect(change).to_contain_text(me)
    expect(history.locator(".jp-DLInfra-historyRow[data-field^='users.bob']")).to_have_count(1)
    history.screenshot(path=str(ARTIFACTS / "console-history.png"))

    # the launcher has a card for the console (admins)
    page.locator(".lm-TabBar-addButton:not(.lm-mod-hidden)").first.click()
    card = page.locator(".jp-LauncherCard", has_text="GPU Admin Console")
    expect(card).to_have_count(1, timeout=30_000)
