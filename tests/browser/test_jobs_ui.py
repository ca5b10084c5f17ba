"""Batch jobs in a real JupyterLab: the submit dialog, the Jobs section, the log and outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.testing.distributed import ALLREDUCE_CELL
from jupyter_dlinfra.testing.server import wait_for_file, wait_until, write_notebook

from .test_sidebar import open_sidebar


def test_submit_dialog_runs_the_notebook_as_a_job_and_its_log_opens(lab: Any, page: Any) -> None:
    server = lab(gpus=2, args=("--DLInfra.job_interval=0.2",))
    write_notebook(
        server.workdir / "root" / "train.ipynb",
        "%gpu 1",
        ("lr = 0.1", ["parameters"]),
        "print('training at', lr)",
    )
    page.goto(f"{server.url}lab/tree/train.ipynb?token={server.token}")
    button = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-DLInfra-submitJob")
    expect(button).to_be_visible(timeout=60_000)
    button.click()
    dialog = page.locator(".jp-DLInfra-submitDialog")
    expect(dialog).to_be_visible()
    # prefilled from the notebook
    expect(dialog.locator("input[name=name]")).to_have_value("train")
    expect(dialog.locator("input[name=gpus]")).to_have_value("1")
    expect(dialog.locator("input[name=nodes]")).to_have_value("")  # one process
    expect(dialog.locator("textarea[name=parameters]")).to_have_value(re.compile(r'"lr": 0\.1\b'))

    # a bad parameter is refused by the server and the dialog stays, saying why
    dialog.locator("textarea[name=parameters]").fill('{"1x": 2}')
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(dialog.locator(".jp-DLInfra-submitError")).to_contain_text("1x")
    assert server.get("dlinfra/api/jobs")["jobs"] == []

    # a job spans 1 node or more: the dialog will not submit 0 (JupyterLab keeps Submit off
    # while an input is out of its range), and says why
    accept = dialog.locator(".jp-Dialog-button.jp-mod-accept")
    error = dialog.locator(".jp-DLInfra-submitError")
    dialog.locator("input[name=nodes]").fill("0")
    expect(accept).to_be_disabled()
    expect(error).to_have_text("Nodes must be a whole number, 1 or more, not 0.")
    expect(dialog.locator("input[name=nodes]")).to_have_attribute("aria-invalid", "true")
    dialog.locator("input[name=priority]").fill("5000")
    expect(error).to_contain_text("Nodes must be")  # the first field out of range first
    dialog.locator("input[name=nodes]").fill("")
    expect(error).to_have_text("Priority must be a whole number from -1000 to 1000, not 5000.")
    dialog.locator("input[name=priority]").fill("0")
    expect(accept).to_be_enabled()
    expect(error).to_be_hidden()

    dialog.locator("textarea[name=parameters]").fill('{"lr": 0.25}')
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)

    def finished() -> Any:
        jobs = server.get("dlinfra/api/jobs")["jobs"]
        return jobs if jobs and jobs[0]["state"] not in ("queued", "running") else None

    [job] = wait_until(finished, timeout=90, what="the submitted job to end")
    assert job["state"] == "succeeded" and job["parameters"] == {"lr": 0.25}, job

    sidebar = open_sidebar(page)
    entry = sidebar.locator(f".jp-DLInfra-job[data-job-id='{job['id']}']")
    expect(entry).to_have_attribute("data-state", "succeeded", timeout=30_000)
    entry.locator(".jp-DLInfra-jobLog").click()
    log_view = page.locator(f"#dlinfra-job-log-{job['id']}")
    expect(log_view.locator(".jp-DLInfra-jobLogText")).to_contain_text("training at 0.25")
    expect(log_view).to_have_attribute("data-complete", "true")
    entry.locator(".jp-DLInfra-jobOutput").click()
    # the executed notebook opens in Lab, with its outputs
    expect(page.locator(".jp-OutputArea-output", has_text="training at 0.25").first).to_be_visible(
        timeout=30_000
    )

    # a distributed job's log viewer shows the job's log, or one rank's own
    write_notebook(server.workdir / "root" / "ddp.ipynb", "%gpu 2 --nodes 1", ALLREDUCE_CELL)
    status, ddp, _ = server.request("POST", "dlinfra/api/jobs", {"path": "ddp.ipynb"})
    assert status == 201 and ddp["world_size"] == 2, ddp
    wait_until(
        lambda: server.get(f"dlinfra/api/jobs/{ddp['id']}")["state"] == "succeeded",
        timeout=120,
        what="the distributed job to succeed",
    )
    entry = sidebar.locator(f".jp-DLInfra-job[data-job-id='{ddp['id']}']")
    expect(entry).to_have_attribute("data-state", "succeeded", timeout=30_000)
    expect(entry.locator(".jp-DLInfra-jobRanks")).to_have_text("1 node \u00d7 2 ranks")
    entry.locator(".jp-DLInfra-jobLog").click()
    log_view = page.locator(f"#dlinfra-job-log-{ddp['id']}")
    text = log_view.locator(".jp-DLInfra-jobLogText")
    expect(text).to_contain_text("[rank0]: rank 0/2 local 0")
    ranks = log_view.locator("select.jp-DLInfra-jobLogRank")
    expect(ranks.locator("option")).to_have_count(3)  # the job's, rank 0, rank 1
    ranks.select_option("1")
    expect(text).to_contain_text("rank 1/2 local 1 node 0 gpus GPU-")
    expect(text).not_to_contain_text("[rank0]")
    expect(log_view).to_have_attribute("data-complete", "true")


def test_a_slurm_job_shows_slurms_own_place_and_estimate(
    lab: Any, page: Any, slurm_cluster: Any, tmp_path: Path
) -> None:
    # jobs get a time limit, so that SLURM's backfill plans when the waiting one starts
    config = tmp_path / "slurm-limits.json"
    config.write_text(json.dumps({"DLInfra": {"backend_options": {"slurm": {"time_limit": "10"}}}}))
    server = lab(
        gpus=1,
        args=(
            "--DLInfra.job_interval=0.2",
            "--DLInfra.job_backends=local",
            "--DLInfra.job_backends=slurm",
            f"--config={config}",
        ),
        env=dict(slurm_cluster.env),
    )
    gate = tmp_path / "gate"
    root = server.workdir / "root"
    write_notebook(
        root / "hold.ipynb",
        wait_for_file(gate),
    )
    write_notebook(root / "small.ipynb", "print('small ran')")
    try:
        big = server.post(
            "dlinfra/api/jobs",
            {"path": "hold.ipynb", "backend": "slurm", "gpus": slurm_cluster.ngpu},
        )
        wait_until(
            lambda: server.get(f"dlinfra/api/jobs/{big['id']}")["state"] == "running",
            timeout=60,
            what="the big SLURM job to run",
        )
        small = server.post(
            "dlinfra/api/jobs", {"path": "small.ipynb", "backend": "slurm", "gpus": 2}
        )
        page.goto(f"{server.url}lab?token={server.token}")
        sidebar = open_sidebar(page)
        entry = sidebar.locator(f".jp-DLInfra-job[data-job-id='{small['id']}']")
        expect(entry.locator(".jp-DLInfra-jobReason")).to_have_text(
            "queued in slurm at position 1 of 1: Resources", timeout=60_000
        )
        expect(entry.locator(".jp-DLInfra-estimatedStart")).to_have_attribute(
            "data-estimated-start", re.compile(r"^\d{4}-\d\d-\d\dT"), timeout=30_000
        )
        expect(entry.locator(".jp-DLInfra-estimateBasis")).to_have_text("slurm's own estimate")
    finally:
        gate.write_text("go")
        slurm_cluster.cancel_all()
