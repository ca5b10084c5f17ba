"""Scheduling in a real JupyterLab: where a queued request stands (place, class, reason, estimated
start), the user's fair share, borrowed and preempted grants, the job class in the submit dialog,
and the admin panel's scheduling policy (server-side validation, change history)."""

from __future__ import annotations

import getpass
import re
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.testing.server import wait_until, write_notebook

from .conftest import ARTIFACTS
from .test_sidebar import make_notebook, open_admin, open_and_run, open_sidebar

ESTIMATE = re.compile(r"^(starts in (<1 min|~\d+ (min|h|days)( \d+ min)?)|start time unknown)$")


def _open_admin(page: Any, server: Any) -> Any:
    page.goto(f"{server.url}lab?token={server.token}")
    return open_admin(page)


def test_a_queued_request_shows_its_place_class_reason_and_start_and_the_fair_share(
    lab: Any, page: Any
) -> None:
    server = lab(gpus=1)
    rival = server.start_kernel()
    assert "Granted 1 GPU" in rival.execute("%gpu 1").stdout
    make_notebook(server, "waiting.ipynb", "%gpu 1")
    open_and_run(page, server, "waiting.ipynb")
    sidebar = open_sidebar(page)

    entry = sidebar.locator(".jp-DLInfra-queueEntry")
    expect(entry).to_have_count(1, timeout=30_000)
    [queued] = server.get("dlinfra/api/queue")["queue"]
    assert queued["kernel_id"] != rival.kernel_id and queued["priority_class"] == "interactive"
    expect(entry).to_have_attribute("data-position", "1")
    expect(entry.locator(".jp-DLInfra-queuePosition")).to_have_text("#1")
    expect(entry.locator(".jp-DLInfra-classBadge")).to_have_text("interactive")
    expect(entry).to_have_attribute("data-waiting-code", queued["waiting_code"])
    reason = entry.locator(".jp-DLInfra-waitingReason")
    expect(reason).to_contain_text("0 of 1 free")
    start = entry.locator(".jp-DLInfra-estimatedStart")
    expect(start).to_have_text(ESTIMATE)
    if queued["estimated_start"]:
        expect(start).to_contain_text("starts in ~")
        expect(start).to_have_attribute("data-estimated-start", queued["estimated_start"])
    else:
        expect(start).to_have_text("start time unknown")

    # the same in "My kernels", for this Lab's own request
    mine = sidebar.locator(".jp-DLInfra-myAllocation.jp-mod-queued")
    expect(mine).to_have_count(1)
    expect(mine.locator(".jp-DLInfra-classBadge")).to_have_text("interactive")
    expect(mine.locator(".jp-DLInfra-estimatedStart")).to_have_text(ESTIMATE)

    # the fair share: the one GPU held (the rival) is all the recent use, so the factor is the
    # "used exactly its share" 0.5; first among those waiting
    fair = sidebar.locator(".jp-DLInfra-section-fairshare .jp-DLInfra-fairShare")
    expect(fair).to_be_visible(timeout=30_000)
    standing = server.get("dlinfra/api/fairshare")
    assert standing["you"]["rank"] == 1 and standing["quota"] is None, standing
    expect(fair.locator(".jp-DLInfra-fairShareFactor")).to_have_attribute(
        "data-value", str(standing["you"]["factor"]).removesuffix(".0")
    )
    assert standing["you"]["factor"] == 0.5, standing
    expect(fair.locator(".jp-DLInfra-fairShareFactor")).to_contain_text("0.50")
    expect(fair.locator(".jp-DLInfra-fairShareUsage")).to_contain_text("GPU-h")
    expect(fair.locator(".jp-DLInfra-fairShareRank")).to_have_text("#1 among users waiting")
    expect(fair.locator(".jp-DLInfra-fairShareQuota")).to_have_text("no limit · holding 1 GPU")
    # "My usage": the week's figures of this user, as the report API gives them
    usage = sidebar.locator(".jp-DLInfra-section-usage .jp-DLInfra-usage")
    expect(usage).to_be_visible(timeout=30_000)
    me = server.get("dlinfra/api/me")["user"]
    report = server.get(f"dlinfra/api/reports/usage?since=7d&user={me}")
    assert report["user"] == me and report["total"]["gpu_hours"] > 0, report
    held = usage.locator(".jp-DLInfra-usageHeld")
    expect(held).to_contain_text("GPU-h")
    # read when the Lab opened (seconds after the grant: maybe 0.0): at most what is held now
    assert 0 <= float(held.get_attribute("data-value") or "-1") <= report["total"]["gpu_hours"]
    hint = usage.locator(".jp-DLInfra-usageHint")
    expect(hint).to_have_attribute("data-hint", re.compile(r"^(none|unobserved|idle|low|good)$"))
    ARTIFACTS.mkdir(exist_ok=True)
    sidebar.screenshot(path=str(ARTIFACTS / "sidebar-scheduling.png"))

    # granted: it leaves the queue, and the rank goes (nothing of the user's waits)
    rival.execute("%gpu release")
    expect(entry).to_have_count(0, timeout=10_000)
    expect(fair.locator(".jp-DLInfra-fairShareRank")).to_have_count(0, timeout=10_000)


def test_the_admin_panel_edits_the_scheduling_policy_and_jobs_pick_a_class(
    lab: Any, page: Any
) -> None:
    me = getpass.getuser()
    server = lab(gpus=1, args=(f"--DLInfra.admin_users={me}", "--DLInfra.job_interval=0.2"))
    panel = _open_admin(page, server)
    form = panel.locator(".jp-DLInfra-schedForm")
    expect(form).to_be_visible(timeout=30_000)
    expect(panel.locator(".jp-DLInfra-schedSource")).to_have_attribute("data-source", "config")
    rows = form.locator(".jp-DLInfra-schedClass")
    expect(rows).to_have_count(3)
    batch = form.locator(".jp-DLInfra-schedClass[data-class='batch']")
    expect(batch.locator(".jp-DLInfra-schedClassPriority")).to_have_value("50")
    expect(batch.locator(".jp-DLInfra-schedClassPreemptible")).to_be_checked()
    expect(form.locator("select[name=kernel_class]")).to_have_value("interactive")
    expect(form.locator("select[name=job_class]")).to_have_value("batch")
    expect(form.locator("input[name=fair_share]")).to_be_checked()
    expect(form.locator("input[name=half_life]")).to_have_value("604800")
    expect(form.locator("input[name=default_user_quota]")).to_have_value("")
    expect(panel.locator(".jp-DLInfra-schedChange")).to_have_count(0)

    # a bad value goes to the server, which refuses it and names the field
    priority = batch.locator(".jp-DLInfra-schedClassPriority")
    priority.fill("50.5")
    form.locator(".jp-DLInfra-schedSave").click()
    error = form.locator(".jp-DLInfra-schedError")
    expect(error).to_contain_text("classes.batch.priority: must be a whole number")
    expect(priority).to_have_attribute("aria-invalid", "true")
    assert server.get("dlinfra/api/scheduling")["source"] == "config"

    # good values: a class priority and a user's quota, each one line of the history
    priority.fill("60")
    # the user quotas' editor: a row per user, a bad number named by its field before sending
    quotas = form.locator(".jp-DLInfra-mapEditor[data-map='user_quotas']")
    quotas.locator(".jp-DLInfra-mapAdd").click()
    quotas.locator(".jp-DLInfra-mapKey").last.fill(me)
    quotas.locator(".jp-DLInfra-mapValue").last.fill("2.5")
    form.locator(".jp-DLInfra-schedSave").click()
    expect(error).to_contain_text(f"user_quotas.{me}: must be a whole number")
    expect(quotas.locator(".jp-DLInfra-mapValue").last).to_have_attribute("aria-invalid", "true")
    assert server.get("dlinfra/api/scheduling")["source"] == "config"
    quotas.locator(".jp-DLInfra-mapValue").last.fill("2")
    form.locator(".jp-DLInfra-schedSave").click()
    changes = panel.locator(".jp-DLInfra-schedChange")
    expect(changes).to_have_count(2)
    expect(error).to_be_hidden()
    fields = {changes.nth(i).get_attribute("data-field") for i in range(2)}
    assert fields == {"classes.batch.priority", f"user_quotas.{me}"}
    expect(
        panel.locator(".jp-DLInfra-schedChange[data-field='classes.batch.priority']")
    ).to_contain_text("50 → 60")
    view = server.get("dlinfra/api/scheduling")
    assert view["source"] == "api" and view["updated_by"] == me
    assert view["policy"]["classes"]["batch"] == {"priority": 60, "preemptible": True}
    assert view["policy"]["user_quotas"] == {me: 2}
    # the reclaim policy's history is its own
    expect(panel.locator(".jp-DLInfra-policyChange")).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    panel.screenshot(path=str(ARTIFACTS / "admin-scheduling.png"))

    # the sidebar's fair share shows the new quota
    fair = open_sidebar(page).locator(".jp-DLInfra-fairShare")
    expect(fair.locator(".jp-DLInfra-fairShareQuota")).to_have_text(
        "holding 0 of 2 GPUs", timeout=30_000
    )

    # the submit dialog offers the classes, the policy's job class first chosen
    write_notebook(server.workdir / "root" / "train.ipynb", "%gpu 1", "print('trained')")
    page.goto(f"{server.url}lab/tree/train.ipynb?token={server.token}")
    button = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-DLInfra-submitJob")
    expect(button).to_be_visible(timeout=60_000)
    button.click()
    dialog = page.locator(".jp-DLInfra-submitDialog")
    select = dialog.locator("select[name=priority_class]")
    expect(select).to_have_value("batch")
    expect(select.locator("option")).to_have_text(
        [
            "interactive (priority 100)",
            "batch (priority 60, preemptible) (default)",
            "low (priority 10, preemptible)",
        ]
    )
    select.select_option("low")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)
    [job] = server.get("dlinfra/api/jobs")["jobs"]
    assert job["priority_class"] == "low", job
    entry = open_sidebar(page).locator(f".jp-DLInfra-job[data-job-id='{job['id']}']")
    expect(entry.locator(".jp-DLInfra-jobClass")).to_have_text("low")
    expect(entry.locator(".jp-DLInfra-jobAttempts")).to_have_count(0)


def test_borrowed_and_preempted_grants_are_marked_and_the_job_counts_its_attempts(
    lab: Any, page: Any
) -> None:
    me = getpass.getuser()
    server = lab(gpus=1, args=(f"--DLInfra.admin_users={me}", "--DLInfra.job_interval=0.2"))
    # over quota, a job of a preemptible class borrows the GPU nobody within quota wants
    status, body, _ = server.request("PUT", "dlinfra/api/scheduling", {"user_quotas": {me: 0}})
    assert status == 200, body
    write_notebook(server.workdir / "root" / "long.ipynb", "%gpu 1", "import time; time.sleep(600)")
    job = server.post("dlinfra/api/jobs", {"path": "long.ipynb", "priority_class": "low"})

    def running() -> Any:
        found = server.get(f"dlinfra/api/jobs/{job['id']}")
        return found if found["state"] == "running" else None

    wait_until(running, timeout=60, what="the job to start")
    [grant] = server.get("dlinfra/api/allocations")["allocations"]
    assert grant["borrowed"] is True and grant["kernel_id"] == f"job-{job['id']}", grant

    page.goto(f"{server.url}lab?token={server.token}")
    expect(page.locator('.jp-SideBar.jp-mod-left li[data-id="dlinfra-sidebar"]')).to_be_visible(
        timeout=60_000
    )
    sidebar = open_sidebar(page)
    entry = sidebar.locator(f".jp-DLInfra-job[data-job-id='{job['id']}']")
    expect(entry).to_have_attribute("data-state", "running", timeout=30_000)
    expect(entry.locator(".jp-DLInfra-jobClass")).to_have_text("low")
    expect(entry.locator(".jp-DLInfra-borrowedBadge")).to_have_text("borrowed")
    card = sidebar.locator(".jp-DLInfra-gpuCard.jp-mod-held")
    expect(card.locator(".jp-DLInfra-borrowedBadge")).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    sidebar.screenshot(path=str(ARTIFACTS / "sidebar-borrowed.png"))
    expect(sidebar.locator(".jp-DLInfra-fairShareQuota")).to_have_text(
        "holding 1 GPU, over a quota of 0"
    )

    # the job is stopped for a kernel's request of a higher class: mark it while it stops
    page.evaluate(
        """() => {
          window.__dlinfraPreempted = null;
          const root = document.getElementById('dlinfra-sidebar');
          const look = () => {
            const mark = root.querySelector('.jp-DLInfra-job .jp-DLInfra-preemptedBadge');
            if (mark && !window.__dlinfraPreempted) {
              window.__dlinfraPreempted = mark.textContent + '|' + mark.title;
            }
          };
          new MutationObserver(look).observe(root, { childList: true, subtree: true });
        }"""
    )
    status, body, _ = server.request("PUT", "dlinfra/api/scheduling", {"user_quotas": {}})
    assert status == 200, body
    rival = server.start_kernel()
    assert "being stopped" in rival.execute("%gpu 1 --no-wait").stdout
    page.wait_for_function("() => window.__dlinfraPreempted !== null", timeout=30_000)
    seen = page.evaluate("() => window.__dlinfraPreempted")
    assert seen.startswith("being preempted|Being stopped and queued again: preempted for"), seen

    # requeued to start afresh: the attempt shows, and the kernel holds the GPU
    expect(entry).to_have_attribute("data-state", "queued", timeout=30_000)
    attempts = entry.locator(".jp-DLInfra-jobAttempts")
    expect(attempts).to_have_text("preempted once")
    expect(attempts).to_have_attribute("data-attempts", "1")
    expect(entry.locator(".jp-DLInfra-preemptedBadge")).to_have_count(0)
    assert server.get(f"dlinfra/api/jobs/{job['id']}")["attempts"] == 1
    server.delete(f"dlinfra/api/jobs/{job['id']}")
