"""Idle reclaim in a real JupyterLab: the warning notification and its Keep, the sidebar's
countdown, and the admin panel (policy form, server-side validation, dry run)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.testing.server import wait_until

from .test_sidebar import make_notebook, open_admin, open_and_run, open_sidebar

FAST = (
    "--DLInfra.telemetry_interval=0.25",
    "--DLInfra.idle_after=0.5",
    "--DLInfra.warn_after=1",
    "--DLInfra.reclaim_after=120",
    "--DLInfra.keep_extension=600",
    "--DLInfra.max_keeps=2",
)


def _idle_gpus(tmp_path: Path, count: int) -> dict[str, str]:
    load = tmp_path / "load.json"
    load.write_text(json.dumps({str(i): {"utilization_percent": 0} for i in range(count)}))
    return {"DLINFRA_SIMULATED_LOAD_FILE": str(load)}


def test_the_idle_warning_shows_a_countdown_and_keep_works(
    lab: Any, page: Any, tmp_path: Path
) -> None:
    server = lab(gpus=2, args=FAST, env=_idle_gpus(tmp_path, 2))
    make_notebook(server, "idle.ipynb", "%gpu 1")
    open_and_run(page, server, "idle.ipynb")
    expect(page.locator(".jp-OutputArea-output").first).to_contain_text(
        "Granted 1 GPU", timeout=60_000
    )
    sidebar = open_sidebar(page)
    badge = sidebar.locator(".jp-DLInfra-idleBadge-warned")
    expect(badge).to_contain_text("Reclaim in", timeout=30_000)
    toast = page.locator(".Toastify__toast", has_text="unless used or kept")
    expect(toast.first).to_be_visible(timeout=30_000)

    kernel_id = server.get("dlinfra/api/allocations")["allocations"][0]["kernel_id"]
    toast.first.get_by_role("button", name="Keep").click()
    expect(page.locator(".Toastify__toast", has_text="Kept the GPUs").first).to_be_visible()

    def kept() -> Any:
        idle = server.get(f"dlinfra/api/kernels/{kernel_id}/usage")["idle"]
        return idle if idle["keeps_left"] == 1 and idle["state"] == "idle" else None

    idle = wait_until(kept, timeout=30, what="the keep to reach the server")
    assert idle["hold_until"] is not None
    # the badge follows: no countdown while kept, and the hint explains the waste
    expect(sidebar.locator(".jp-DLInfra-idleBadge-idle")).to_contain_text("kept until")
    expect(badge).to_have_count(0)
    expect(sidebar.locator(".jp-DLInfra-hint").first).to_contain_text("idle between cells")


def test_the_admin_panel_edits_the_policy_and_runs_a_dry_run(lab: Any, page: Any) -> None:
    me = getpass.getuser()
    server = lab(gpus=1, args=(f"--DLInfra.admin_users={me}",))
    page.goto(f"{server.url}lab?token={server.token}")
    panel = open_admin(page)
    expect(panel.locator("input[name=reclaim_after]")).to_have_value("3600")

    # a bad value is refused by the server, which names the field
    panel.locator("input[name=reclaim_after]").fill("100")
    panel.locator(".jp-DLInfra-policySave").click()
    expect(panel.locator(".jp-DLInfra-policyError")).to_contain_text(
        "reclaim_after: must be later than warn_after"
    )
    assert server.get("dlinfra/api/policy")["source"] == "config"

    panel.locator("input[name=reclaim_after]").fill("7200")
    panel.locator("select[name=action]").select_option("notify")
    panel.locator(".jp-DLInfra-policySave").click()
    expect(panel.locator(".jp-DLInfra-policyChange")).to_have_count(2)
    view = server.get("dlinfra/api/policy")
    assert view["source"] == "api" and view["updated_by"] == me
    assert view["policy"]["reclaim_after"] == 7200 and view["policy"]["action"] == "notify"

    panel.locator("input[name=simulate_hours]").fill("2")
    panel.locator(".jp-DLInfra-simulate").click()
    result = panel.locator(".jp-DLInfra-simulateResult")
    expect(result.locator(".jp-DLInfra-simKernelsSeen")).to_have_attribute("data-value", "0")


def test_non_admins_get_no_admin_panel(lab: Any, page: Any) -> None:
    server = lab(gpus=1)
    page.goto(f"{server.url}lab?token={server.token}")
    expect(page.locator('.jp-SideBar.jp-mod-left li[data-id="dlinfra-sidebar"]')).to_be_visible(
        timeout=60_000
    )
    # the GPUs sidebar loaded, so the extension asked GET me: no panel, no tab
    open_sidebar(page)
    expect(page.locator("#dlinfra-admin")).to_have_count(0)
    expect(page.locator(".jp-DLInfra-consoleLink")).to_have_count(0)
    expect(page.locator("#dlinfra-console")).to_have_count(0)
