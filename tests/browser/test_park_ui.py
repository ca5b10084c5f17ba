"""Parked kernels in a real JupyterLab, on a simulated GPU with the labelled simulated
checkpointer: the sidebar's Park button (refused, then parked), the Parked badge with its
reason, a job on loan on the parked GPU, Resume, then `%gpu park` and a cell that takes the
GPU back with its "resumed your GPUs in" line. The cluster cards mark a parked GPU from the
cluster view's `parked_for`, another user's too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.parking import ParkBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.testing.server import ServerProcess, wait_until, write_notebook

from .conftest import ARTIFACTS
from .test_sidebar import open_and_run, open_sidebar

GIB = 1 << 30

# the borrowing job runs until it is stopped (or two minutes pass)
BORROWER = "import time\ntime.sleep(120)"


def run_cell(page: Any, index: int) -> None:
    """Run the notebook's cell ``index`` (0-based) with Shift+Enter, as a user does."""
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")


def allocation(server: ServerProcess) -> dict[str, Any]:
    (found,) = server.get("dlinfra/api/allocations?state=granted")["allocations"]
    result: dict[str, Any] = found
    return result


def test_park_from_the_sidebar_then_resume_and_the_next_cell_takes_the_gpu_back(
    lab: Any, page: Any, tmp_path: Path
) -> None:
    load = tmp_path / "load.json"
    load.write_text(json.dumps({"0": {"utilization_percent": 0, "memory_used_bytes": GIB}}))
    control = tmp_path / "checkpoint.json"
    control.write_text(json.dumps({"refuse": {"*": "NCCL communicators are open"}}))
    server = lab(
        gpus=1,
        args=("--DLInfra.job_interval=0.2",),
        env={
            "DLINFRA_SIMULATED_LOAD_FILE": str(load),
            "DLINFRA_SIMULATED_CHECKPOINT_FILE": str(control),
        },
    )
    root = server.workdir / "root"
    write_notebook(root / "park.ipynb", "%gpu 1", "%gpu park", "print('x' * 3)")
    write_notebook(root / "borrow.ipynb", BORROWER)
    open_and_run(page, server, "park.ipynb")
    outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-OutputArea")
    expect(outputs.nth(0)).to_contain_text("Granted 1 GPU", timeout=60_000)
    me = server.get("dlinfra/api/me")["user"]

    sidebar = open_sidebar(page)
    mine = sidebar.locator(".jp-DLInfra-myAllocation.jp-mod-granted")
    badge = mine.locator(".jp-DLInfra-parkBadge")
    park = mine.locator("button.jp-DLInfra-park")
    expect(park).to_be_visible(timeout=30_000)
    assert "Park the 1 GPU of park.ipynb" in (park.get_attribute("aria-label") or "")

    # refused by the checkpointer: the server's reason in the usual error dialog, nothing parked
    park.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Cannot park the GPUs", timeout=30_000)
    expect(dialog).to_contain_text("not parked: NCCL communicators are open")
    dialog.locator(".jp-Dialog-footer button").first.click()
    expect(dialog).to_have_count(0)
    assert allocation(server)["park"] is None
    expect(badge).to_have_count(0)

    # parked: the badge says so in words; its title says why, since when and how much
    control.write_text(json.dumps({}))
    park.click()
    expect(badge).to_have_attribute("data-park-state", "parked", timeout=30_000)
    expect(badge).to_have_text("Parked · 1.0 GiB")
    expect(badge).to_have_attribute(
        "title", re.compile(rf"^parked by {re.escape(me)}; since .*1\.0 GiB of GPU memory kept")
    )
    # the server refuses to release a parked grant: the row offers Resume instead
    expect(mine.locator(".jp-DLInfra-release")).to_have_count(0)
    status = page.locator("#dlinfra-status")
    expect(status).to_have_attribute("data-state", "parked")
    expect(status).to_contain_text("GPU 1 · parked")
    # the card, from the GPU's parked_for: free to lend (not free), and whose kernel it awaits
    card = sidebar.locator(".jp-DLInfra-gpuCard")
    expect(card.locator(".jp-DLInfra-parkedMark")).to_have_text("parked")
    expect(card.locator(".jp-DLInfra-holder")).to_have_text(
        f"free to lend · parked: {me} · park.ipynb"
    )
    expect(card).to_have_class(re.compile(r"\bjp-mod-lendable\b"))
    label = re.compile(rf", free to lend · parked: {re.escape(me)} · park\.ipynb, .*, parked$")
    expect(card).to_have_attribute("aria-label", label)
    expect(sidebar.locator(".jp-DLInfra-nodeCount")).to_have_text(" 0 of 1 free")
    (gpu,) = server.get("dlinfra/api/cluster")["nodes"][0]["gpus"]
    assert gpu["holder"] is None and gpu["parked_for"]["user"] == me, gpu

    # a job borrows the parked GPU: the card shows it on loan, and so does the kernel's row
    job = server.post("dlinfra/api/jobs", {"path": "borrow.ipynb", "gpus": 1})
    expect(card.locator(".jp-DLInfra-onLoanBadge")).to_have_text("on loan", timeout=90_000)
    expect(card.locator(".jp-DLInfra-holder")).to_contain_text(f"job #{job['id']}")
    expect(card.locator(".jp-DLInfra-onLoanBadge")).to_have_attribute(
        "title", re.compile(rf"^On loan from {re.escape(me)} · park\.ipynb, a parked kernel")
    )
    expect(card.locator(".jp-DLInfra-parkedMark")).to_have_count(0)
    expect(mine.locator(".jp-DLInfra-lentTo")).to_have_text(f"on loan to job #{job['id']}")
    ARTIFACTS.mkdir(exist_ok=True)
    sidebar.screenshot(path=str(ARTIFACTS / "sidebar-parked.png"))

    # Resume takes it back: the job is stopped and queued again, the badge goes
    resume = mine.locator("button.jp-DLInfra-resume")
    assert "take the parked 1 GPU of park.ipynb back" in (resume.get_attribute("aria-label") or "")
    resume.click()
    expect(badge).to_have_count(0, timeout=60_000)
    expect(card.locator(".jp-DLInfra-onLoanBadge")).to_have_count(0)
    expect(status).to_have_attribute("data-state", "granted")
    expect(mine.locator(".jp-DLInfra-release")).to_be_visible()
    assert allocation(server)["park"] is None
    # out of the way: queued again, it would borrow the GPU at the next park
    wait_until(
        lambda: server.get(f"dlinfra/api/jobs/{job['id']}")["state"] == "queued",
        timeout=60,
        what="the borrowing job to be queued again",
    )
    server.delete(f"dlinfra/api/jobs/{job['id']}")

    # %gpu park in the notebook, then a cell: it takes the GPU back first and says so
    run_cell(page, 1)
    expect(outputs.nth(1)).to_contain_text("Parked: the memory of this kernel's 1 GPU")
    expect(badge).to_have_attribute("data-park-state", "parked", timeout=30_000)
    expect(badge).to_have_attribute("title", re.compile(r"^parked by %gpu park; "))
    run_cell(page, 2)
    expect(outputs.nth(2)).to_contain_text("resumed your GPUs in", timeout=60_000)
    expect(outputs.nth(2)).to_contain_text("xxx")
    expect(badge).to_have_count(0, timeout=30_000)
    expect(mine.locator("button.jp-DLInfra-park")).to_be_visible()


def test_another_users_parked_gpu_shows_on_its_card_as_free_to_lend(lab: Any, page: Any) -> None:
    # bob's kernel (another server's, which no reconcile pass here ends) parked on one of two
    # GPUs: this Lab knows it only from the cluster view's parked_for and the stream's grants
    server = lab(gpus=2, args=("--DLInfra.reconcile_interval=0",))
    node = server.get("dlinfra/api/cluster")["nodes"][0]["name"]
    store = Store(server.db_url)
    try:
        ledger = Ledger(store, SystemClock())
        ledger.register_kernel(
            KernelRecord(kernel_id="k-bob", user="bob", node=node, server_id="elsewhere")
        )
        grant = ledger.request(kernel_id="k-bob", count=1)
        book = ParkBook(ledger)
        book.begin(grant.id, reason="parked: idle for 30 min")
        book.parked(grant.id, gpu_bytes=2 * GIB, seconds=1.0)
    finally:
        store.dispose()
    (uuid,) = grant.gpus
    wait_until(
        lambda: any(
            g["uuid"] == uuid and (g["parked_for"] or {}).get("user") == "bob"
            for g in server.get("dlinfra/api/cluster")["nodes"][0]["gpus"]
        ),
        timeout=30,
        what="the cluster view to say bob's GPU is parked",
    )

    page.goto(f"{server.url}lab?token={server.token}")
    sidebar = open_sidebar(page)
    card = sidebar.locator(f".jp-DLInfra-gpuCard[data-uuid='{uuid}']")
    expect(card.locator(".jp-DLInfra-parkedMark")).to_have_text("parked", timeout=30_000)
    expect(card.locator(".jp-DLInfra-holder")).to_have_text(
        "free to lend · parked: bob · kernel k-bob"
    )
    # its park state comes with bob's grant in the stream: why, and how much host memory
    expect(card.locator(".jp-DLInfra-parkedMark")).to_have_attribute(
        "title", re.compile(r"^Parked: bob · kernel k-bob\. parked: idle for 30 min; .*2\.0 GiB")
    )
    expect(card).to_have_class(re.compile(r"\bjp-mod-lendable\b"))
    # the other GPU is the only free one, and no kernel of this Lab's is shown as parked
    expect(sidebar.locator(".jp-DLInfra-gpuCard.jp-mod-free")).to_have_count(1)
    expect(sidebar.locator(".jp-DLInfra-nodeCount")).to_have_text(" 1 of 2 free")
    expect(sidebar.locator(".jp-DLInfra-myAllocation")).to_have_count(0)
