"""The GPU sidebar in a real JupyterLab, driven by Debian's chromium."""

from __future__ import annotations

import json
from typing import Any

import psutil
from playwright.sync_api import expect

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.server.events import QUEUE_PAGE
from jupyter_dlinfra.testing.server import ServerProcess, wait_until

from .conftest import ARTIFACTS


def make_notebook(server: ServerProcess, name: str, source: str) -> None:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "source": source,
                "metadata": {},
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    server._ok("PUT", f"api/contents/{name}", {"type": "notebook", "content": notebook})


def open_and_run(page: Any, server: ServerProcess, name: str) -> None:
    page.goto(f"{server.url}lab/tree/{name}?token={server.token}")
    editor = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .cm-content").first
    editor.click()
    # the kernel must be idle before Shift+Enter, or the run waits on a kernel that is starting
    expect(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")).to_be_visible()
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    expect(panel.locator(".jp-KernelName")).to_contain_text("Python 3", timeout=60_000)
    expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=60_000
    )
    editor.click()
    page.keyboard.press("Shift+Enter")


def open_sidebar(page: Any) -> Any:
    sidebar = page.locator("#dlinfra-sidebar")
    if not sidebar.is_visible():
        page.locator('.jp-SideBar.jp-mod-left li[data-id="dlinfra-sidebar"]').click()
    expect(sidebar).to_be_visible()
    return sidebar


def open_console(page: Any, tab: str) -> Any:
    """The admin console (the sidebar's link, for admins) at one of its tabs."""
    sidebar = open_sidebar(page)
    sidebar.locator(".jp-DLInfra-consoleLink").click(timeout=60_000)
    console = page.locator("#dlinfra-console")
    expect(console).to_be_visible(timeout=30_000)
    console.locator(".lm-TabBar-tab", has_text=tab).click()
    return console


def open_admin(page: Any) -> Any:
    """The reclaim and scheduling forms: the admin console's Policy tab."""
    open_console(page, "Policy")
    panel = page.locator("#dlinfra-admin")
    expect(panel).to_be_visible(timeout=60_000)
    return panel


def active(server: ServerProcess) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = server.get("dlinfra/api/allocations")["allocations"]
    return found


def test_percent_gpu_shows_in_the_sidebar_and_releases_from_it(lab: Any, page: Any) -> None:
    server = lab(gpus=4)
    make_notebook(server, "train.ipynb", "%gpu 2")
    open_and_run(page, server, "train.ipynb")
    expect(page.locator(".jp-OutputArea-output").first).to_contain_text(
        "Granted 2 GPUs", timeout=60_000
    )
    sidebar = open_sidebar(page)
    expect(sidebar.locator(".jp-DLInfra-gpuCard")).to_have_count(4)
    expect(sidebar.locator(".jp-DLInfra-simulatedBadge").first).to_be_visible()
    mine = sidebar.locator(".jp-DLInfra-myAllocation.jp-mod-granted")
    expect(mine).to_have_count(1, timeout=5_000)
    expect(mine.locator(".jp-DLInfra-myGpu")).to_have_count(2)
    held = active(server)
    assert len(held) == 1 and held[0]["count"] == 2
    held_uuids = {g["uuid"] for g in held[0]["gpus"]}
    cards = sidebar.locator(".jp-DLInfra-gpuCard.jp-mod-held, .jp-DLInfra-gpuCard.jp-mod-mine")
    expect(cards).to_have_count(2)
    assert {cards.nth(i).get_attribute("data-uuid") for i in range(2)} == held_uuids
    ARTIFACTS.mkdir(exist_ok=True)
    sidebar.screenshot(path=str(ARTIFACTS / "sidebar.png"))

    # screen readers: labelled controls and a live queue; keyboard: Enter on the focused button
    expect(sidebar.locator(".jp-DLInfra-section-queue [aria-live='polite']")).to_have_count(1)
    release = mine.locator(".jp-DLInfra-release")
    assert release.get_attribute("aria-label")
    bar = sidebar.locator(".jp-DLInfra-meter-util [role='progressbar']").first
    assert 0 <= float(bar.get_attribute("aria-valuenow") or "-1") <= 100
    release.focus()
    page.keyboard.press("Enter")
    wait_until(lambda: active(server) == [], timeout=10, what="the release to reach the ledger")
    expect(sidebar.locator(".jp-DLInfra-myAllocation")).to_have_count(0)
    expect(sidebar.locator(".jp-DLInfra-gpuCard.jp-mod-free")).to_have_count(4)


def test_queue_entry_then_grant_with_a_notification(lab: Any, page: Any) -> None:
    server = lab(gpus=2)
    rival = server.start_kernel()
    assert "Granted 2 GPUs" in rival.execute("%gpu 2").stdout
    make_notebook(server, "waiting.ipynb", "%gpu 1")
    open_and_run(page, server, "waiting.ipynb")
    sidebar = open_sidebar(page)
    entry = sidebar.locator(".jp-DLInfra-queueEntry")
    expect(entry).to_have_count(1, timeout=30_000)
    expect(entry).to_have_attribute("data-position", "1")
    expect(entry.locator(".jp-DLInfra-waitingReason")).to_contain_text("0 of 2 free")
    queued = server.get("dlinfra/api/queue")["queue"]
    assert len(queued) == 1 and queued[0]["kernel_id"] != rival.kernel_id
    ARTIFACTS.mkdir(exist_ok=True)
    sidebar.screenshot(path=str(ARTIFACTS / "sidebar-queue.png"))

    rival.execute("%gpu release")
    expect(entry).to_have_count(0, timeout=10_000)
    toast = page.locator(".Toastify__toast", has_text="Granted")
    expect(toast.first).to_be_visible(timeout=10_000)
    expect(page.locator(".jp-OutputArea").first).to_contain_text("Granted 1 GPU")
    granted = active(server)
    assert [a["kernel_id"] for a in granted] == [queued[0]["kernel_id"]]
    assert json.dumps(granted[0]["state"]) == '"granted"'


def test_a_long_queue_shows_its_first_page_and_my_request_further_down(lab: Any, page: Any) -> None:
    # kernels only the ledger knows (no reconcile pass to end them): one holds the GPU, more
    # than a page of the owner's requests wait before the notebook's
    server = lab(gpus=1, args=("--DLInfra.reconcile_interval=0",))
    user = server.get("dlinfra/api/me")["user"]
    node = server.get("dlinfra/api/cluster")["nodes"][0]["name"]
    seeded = QUEUE_PAGE + 4
    store = Store(server.db_url)
    try:
        ledger = Ledger(store, SystemClock())
        for i in range(seeded + 1):
            kernel = f"seed-{i}"
            ledger.register_kernel(
                KernelRecord(kernel_id=kernel, user=user, node=node, server_id="seed")
            )
            ledger.request(kernel_id=kernel, count=1)
    finally:
        store.dispose()
    make_notebook(server, "deep.ipynb", "%gpu 1")
    open_and_run(page, server, "deep.ipynb")
    sidebar = open_sidebar(page)
    queue = sidebar.locator(".jp-DLInfra-section-queue")
    # the notebook's request, last in line, is not in the stream's page but in "My kernels"
    mine = sidebar.locator(".jp-DLInfra-myAllocation.jp-mod-queued")
    expect(mine).to_contain_text(f"queued #{seeded + 1}", timeout=30_000)
    expect(queue.locator(".jp-DLInfra-queueEntry")).to_have_count(QUEUE_PAGE)
    expect(queue.locator(".jp-DLInfra-queueRest")).to_have_text("and 5 more waiting")

    queue.locator(".jp-DLInfra-queueMore").click()
    expect(queue.locator(".jp-DLInfra-queueEntry")).to_have_count(seeded + 1)
    expect(queue.locator(".jp-DLInfra-queueEntry.jp-mod-mine")).to_have_attribute(
        "data-position", str(seeded + 1)
    )
    expect(queue.locator(".jp-DLInfra-queueRest")).to_have_count(0)
    queue.locator(".jp-DLInfra-queueFewer").click()
    expect(queue.locator(".jp-DLInfra-queueEntry")).to_have_count(QUEUE_PAGE)


def test_toolbar_requests_and_releases_and_the_status_bar_follows(lab: Any, page: Any) -> None:
    server = lab(gpus=2)
    make_notebook(server, "bar.ipynb", "x = 1")
    open_and_run(page, server, "bar.ipynb")
    status = page.locator("#dlinfra-status")
    expect(status).to_have_attribute("data-state", "none", timeout=30_000)
    expect(status).to_contain_text("GPU \u2013")  # an en dash: no GPUs

    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-DLInfra-toolbarButton").click()
    page.locator("#dlinfra-request-count").fill("2")
    page.locator(".jp-Dialog-footer button", has_text="Request").click()
    expect(page.locator(".jp-Dialog-header", has_text="GPUs granted")).to_be_visible()
    page.locator(".jp-Dialog-footer button", has_text="Ok").click()
    held = active(server)
    assert len(held) == 1 and held[0]["count"] == 2 and held[0]["state"] == "granted"

    expect(status).to_have_attribute("data-state", "granted", timeout=10_000)
    expect(status).to_contain_text("GPU 2")
    status.click()
    expect(page.locator("#dlinfra-sidebar")).to_be_visible()

    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-DLInfra-toolbarButton").click()
    page.locator(".jp-Dialog-footer button", has_text="Release").click()
    wait_until(lambda: active(server) == [], timeout=10, what="the toolbar release")
    expect(status).to_have_attribute("data-state", "none", timeout=10_000)


def test_a_request_that_fails_is_notified(lab: Any, page: Any) -> None:
    server = lab(gpus=1)
    rival = server.start_kernel()
    rival.execute("%gpu 1")
    make_notebook(server, "doomed.ipynb", "%gpu 1")
    open_and_run(page, server, "doomed.ipynb")
    sidebar = open_sidebar(page)
    expect(sidebar.locator(".jp-DLInfra-queueEntry")).to_have_count(1, timeout=30_000)
    kernel_id = server.get("dlinfra/api/queue")["queue"][0]["kernel_id"]
    victims = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(kernel_id in part for part in p.info["cmdline"] or [])
    ]
    assert len(victims) == 1
    victims[0].kill()  # the kernel dies while it waits: its request ends without being asked
    toast = page.locator(".Toastify__toast", has_text="kernel died")
    expect(toast.first).to_be_visible(timeout=30_000)
    expect(sidebar.locator(".jp-DLInfra-queueEntry")).to_have_count(0)
