"""What a person new to the product meets first, in a real JupyterLab driven by chromium."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

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
