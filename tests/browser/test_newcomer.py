"""What a person new to the product meets first, in a real JupyterLab driven by chromium."""

from __future__ import annotations

import getpass
import json
import re
import shutil
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.testing.server import wait_until, write_notebook

from .conftest import ARTIFACTS
from .test_sidebar import open_admin, open_sidebar

REPO = Path(__file__).resolve().parents[2]


def shipped_kernels(tmp_path: Path) -> dict[str, str]:
    """An environment whose JUPYTER_PATH has this checkout's kernelspecs (over installed ones)."""
    shipped = tmp_path / "shipped"
    for spec in (REPO / "kernels").iterdir():
        shutil.copytree(spec, shipped / "kernels" / spec.name)
    return {"JUPYTER_PATH": str(shipped)}


def new_notebook_from_the_file_menu(page: Any) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
    page.locator(".lm-Menu:visible .lm-Menu-itemLabel", has_text="New").first.hover()
    page.locator(".lm-Menu:visible [data-command='notebook:create-new']").first.click()


def test_a_new_notebook_starts_the_kernel_without_gpus(lab: Any, page: Any, tmp_path: Path) -> None:
    server = lab(gpus=2, env=shipped_kernels(tmp_path))
    specs = server.get("api/kernelspecs")
    assert specs["default"] == "python3"
    assert {"python3-1gpu", "python3-2gpu", "python3-4gpu"} <= set(specs["kernelspecs"])
    page.goto(f"{server.url}lab?token={server.token}")
    # the launcher lists the default kernel first
    cards = page.locator(".jp-Launcher-section:has-text('Notebook') .jp-LauncherCard")
    expect(cards.first).to_have_attribute("title", "Python 3 (ipykernel)", timeout=60_000)

    new_notebook_from_the_file_menu(page)
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_be_visible()
    # the choice Lab offers (and takes on Enter) is the plain kernel, not one that takes a GPU
    chosen = dialog.locator("select").evaluate("s => s.options[s.selectedIndex].text")
    assert chosen == "Python 3 (ipykernel)"
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(panel.locator(".jp-KernelName")).to_have_text("Python 3 (ipykernel)", timeout=60_000)
    expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=60_000
    )
    sessions = server.get("api/sessions")
    assert [s["kernel"]["name"] for s in sessions] == ["python3"]
    assert server.get("dlinfra/api/allocations")["allocations"] == []


def test_the_sidebar_names_jobs_says_what_estimates_rest_on_and_marks_foreign_use(
    lab: Any, page: Any, tmp_path: Path
) -> None:
    load = tmp_path / "load.json"
    # GPU 1 is free in the ledger, but someone's process computes on it
    load.write_text(
        json.dumps(
            {
                "1": {
                    "utilization_percent": 80,
                    "processes": {"4242": 2**30},
                    "users": {"4242": "mallory"},
                }
            }
        )
    )
    server = lab(
        gpus=2,
        args=("--DLInfra.job_interval=0.2",),
        env={"DLINFRA_SIMULATED_LOAD_FILE": str(load)},
    )
    root = server.workdir / "root"
    write_notebook(root / "train.ipynb", "%gpu 1", "import time; time.sleep(600)")
    write_notebook(root / "sweep.ipynb", "%gpu 2", "print('done')")
    running = server.post("dlinfra/api/jobs", {"path": "train.ipynb"})
    try:
        wait_until(
            lambda: server.get(f"dlinfra/api/jobs/{running['id']}")["state"] == "running",
            timeout=60,
            what="the first job to start",
        )
        # a job of the same class waits for both GPUs: it is queued with an estimate
        waiting = server.post("dlinfra/api/jobs", {"path": "sweep.ipynb"})
        [queued] = wait_until(
            lambda: server.get("dlinfra/api/queue")["queue"], timeout=30, what="it to queue"
        )
        assert (
            queued["kernel_id"] == f"job-{waiting['id']}" and queued["estimate_basis"] == "default"
        )
        page.goto(f"{server.url}lab?token={server.token}")
        sidebar = open_sidebar(page)

        # the job's GPU is labelled as the job's, not as a notebook's
        [held] = [a for a in server.get("dlinfra/api/allocations")["allocations"] if a["gpus"]]
        card = sidebar.locator(f".jp-DLInfra-gpuCard[data-uuid='{held['gpus'][0]['uuid']}']")
        expect(card.locator(".jp-DLInfra-holder")).to_contain_text(
            f"job #{running['id']} (train)", timeout=30_000
        )
        entry = sidebar.locator(".jp-DLInfra-queueEntry")
        expect(entry.locator(".jp-DLInfra-queueWho")).to_contain_text(f"job #{waiting['id']}")

        # the estimate says it assumes the default holding time (no grant has ended yet)
        expect(entry.locator(".jp-DLInfra-estimatedStart")).to_contain_text("starts in ~")
        basis = entry.locator(".jp-DLInfra-estimateBasis")
        expect(basis).to_have_text("assuming the default holding time of 1 h (no history yet)")
        expect(basis).to_have_attribute("data-basis", "default")

        # the free GPU with someone's process on it is marked, with who and what in a tooltip
        foreign = sidebar.locator(".jp-DLInfra-gpuCard[data-index='1']")
        expect(foreign).to_have_class(re.compile(r"\bjp-mod-outsideLedger\b"))
        mark = foreign.locator(".jp-DLInfra-outsideLedger")
        expect(mark).to_have_text("in use outside the ledger by mallory")
        assert "pid 4242 (mallory, 1.0 GiB)" in (mark.get_attribute("title") or "")
        expect(sidebar.locator(".jp-DLInfra-outsideLedger")).to_have_count(1)
        ARTIFACTS.mkdir(exist_ok=True)
        sidebar.screenshot(path=str(ARTIFACTS / "sidebar-newcomer.png"))
    finally:
        for job in server.get("dlinfra/api/jobs")["jobs"]:
            if job["state"] in ("queued", "running"):
                server.delete(f"dlinfra/api/jobs/{job['id']}")


#: text the layout hides: an element that cuts its text (an ellipsis, a clamp, a field narrower
#: than its value) with no title (its own or an ancestor's) giving the whole of it, or text that
#: runs out of the box it is in (a card, a form, the panel)
HIDDEN_TEXT = """(root) => {
  const found = [];
  const norm = s => (s || '').replace(/\\s+/g, ' ').trim();
  const titleOf = el => norm(el.closest('[title]')?.getAttribute('title'));
  for (const el of root.querySelectorAll('*')) {
    // unseen, or seen by screen readers only (a 1-pixel clip)
    if (!(el instanceof HTMLElement) || el.getClientRects().length === 0) continue;
    if (el.clientWidth <= 1 && el.clientHeight <= 1) continue;
    const style = getComputedStyle(el);
    const field = el instanceof HTMLInputElement && ['text', 'search', 'number'].includes(el.type);
    const text = norm(field ? el.value : el.textContent);
    if (!text) continue;
    const clips = field || ['hidden', 'clip'].includes(style.overflowX) ||
      ['hidden', 'clip'].includes(style.overflowY);
    if (clips) {
      const cut = el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1;
      if (cut && !titleOf(el).includes(text)) found.push(`cut: ${el.className}: ${text}`);
      continue;
    }
    if (![...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const right = el.getBoundingClientRect().right;
    for (let box = el.parentElement; box && box !== root.parentElement; box = box.parentElement) {
      if (right > box.getBoundingClientRect().right + 1) {
        found.push(`runs out of ${box.className}: ${el.className}: ${text}`);
        break;
      }
    }
  }
  return found;
}"""

LONG_MODEL = "NVIDIA H100 80GB HBM3 in a partition whose name is longer than any card"
LONG_CLASS = "research-training-runs-of-the-vision-group"


def test_long_names_fit_or_show_whole_in_a_tooltip(lab: Any, page: Any) -> None:
    me = getpass.getuser()
    server = lab(
        gpus=1,
        args=(f"--DLInfra.admin_users={me}", "--DLInfra.job_interval=0.2"),
        env={"DLINFRA_SIMULATED_GPU_MODELS": LONG_MODEL},
    )
    classes = {
        "interactive": {"priority": 100},
        "batch": {"priority": 50, "preemptible": True},
        "low": {"priority": 10, "preemptible": True},
        LONG_CLASS: {"priority": 40, "preemptible": True},
    }
    status, body, _ = server.request("PUT", "dlinfra/api/scheduling", {"classes": classes})
    assert status == 200, body
    root = server.workdir / "root"
    failing = "preprocess-the-imagenet-shards-before-the-long-training-run.ipynb"
    message = "the data loader found no training shards under " + "/mnt/datasets/imagenet" * 8
    write_notebook(root / failing, f"raise RuntimeError({message!r})")
    write_notebook(root / "train.ipynb", "%gpu 1", "import time; time.sleep(600)")
    failed = server.post("dlinfra/api/jobs", {"path": failing})
    running = server.post(
        "dlinfra/api/jobs",
        {
            "path": "train.ipynb",
            "priority_class": LONG_CLASS,
            "parameters": {"schedule": "cosine-with-warmup-and-restarts-every-ten-epochs"},
        },
    )
    try:
        for job, state in ((failed, "failed"), (running, "running")):
            wait_until(
                lambda job=job, state=state: (
                    server.get(f"dlinfra/api/jobs/{job['id']}")["state"] == state
                ),
                timeout=90,
                what=f"job {job['id']} to be {state}",
            )
        # another in that class waits behind it: the queue shows its class
        server.post("dlinfra/api/jobs", {"path": "train.ipynb", "priority_class": LONG_CLASS})
        wait_until(lambda: server.get("dlinfra/api/queue")["queue"], timeout=30, what="a queue")
        page.goto(f"{server.url}lab?token={server.token}")
        sidebar = open_sidebar(page)
        expect(sidebar.locator(".jp-DLInfra-gpuCard .jp-DLInfra-gpuModel")).to_have_text(LONG_MODEL)
        queued = sidebar.locator(".jp-DLInfra-queueEntry .jp-DLInfra-classBadge")
        expect(queued).to_have_text(LONG_CLASS)
        job = sidebar.locator(f".jp-DLInfra-job[data-job-id='{failed['id']}']")
        expect(job.locator(".jp-DLInfra-jobReason")).to_contain_text("RuntimeError")
        train = sidebar.locator(f".jp-DLInfra-job[data-job-id='{running['id']}']")
        expect(train.locator(".jp-DLInfra-jobClass")).to_have_text(LONG_CLASS)
        sidebar.screenshot(path=str(ARTIFACTS / "sidebar-long-names.png"))
        hidden = sidebar.evaluate(HIDDEN_TEXT)
        assert not hidden, "\n".join(hidden)

        panel = open_admin(page)
        form = panel.locator(".jp-DLInfra-schedForm")
        expect(form.locator(f".jp-DLInfra-schedClass[data-class='{LONG_CLASS}']")).to_have_count(1)
        form.screenshot(path=str(ARTIFACTS / "admin-long-names.png"))
        hidden = panel.evaluate(HIDDEN_TEXT)
        assert not hidden, "\n".join(hidden)
    finally:
        for job in server.get("dlinfra/api/jobs")["jobs"]:
            if job["state"] in ("queued", "running"):
                server.delete(f"dlinfra/api/jobs/{job['id']}")
