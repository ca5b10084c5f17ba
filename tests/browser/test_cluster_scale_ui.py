"""The sidebar on a cluster of 1,024 nodes x 8 GPUs: a summary, a search and filters, and a list
of nodes of which only the rows in view are in the page. Times are printed and asserted only
loosely (the machine is shared with the server)."""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import Gpu, KernelRecord
from jupyter_dlinfra.core.store import Store

from .conftest import ARTIFACTS
from .test_sidebar import open_sidebar

NODES = 1024
MODELS = ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3")


def _seed(server: Any, others: int) -> list[str]:
    """``others`` more nodes of 8 GPUs in the server's ledger, as their servers would
    register them; alice holds all of node-0001 and half of node-0002."""
    store = Store(server.db_url)
    names = [f"node-{n:04d}" for n in range(1, others + 1)]
    try:
        ledger = Ledger(store, SystemClock())
        for n, node in enumerate(names):
            ledger.sync_inventory(
                node,
                [
                    Gpu(
                        uuid=f"GPU-{node}-{i}",
                        node=node,
                        index=i,
                        model=MODELS[n % 2],
                        memory_bytes=80 << 30,
                    )
                    for i in range(8)
                ],
            )
        for kernel, node, count in (("k-a1", names[0], 8), ("k-a2", names[1], 4)):
            ledger.register_kernel(
                KernelRecord(kernel_id=kernel, user="alice", node=node, server_id="elsewhere")
            )
            ledger.request(kernel_id=kernel, count=count)
    finally:
        store.dispose()
    return names


def test_a_thousand_nodes_show_as_a_summary_and_a_list_drawn_as_it_scrolls(
    lab: Any, page: Any
) -> None:
    server = lab(gpus=2)
    names = _seed(server, NODES - 1)
    cluster = server.get("dlinfra/api/cluster")
    assert len(cluster["nodes"]) == NODES and cluster["gpu_count"] == 2 + 8 * (NODES - 1)

    t0 = time.perf_counter()
    page.goto(f"{server.url}lab?token={server.token}")
    sidebar = open_sidebar(page)
    view = sidebar.locator(".jp-DLInfra-clusterLarge")
    expect(view.locator("[data-count='gpus']")).to_have_text(
        f"{cluster['gpu_count']:,} GPUs", timeout=60_000
    )
    first_render_s = time.perf_counter() - t0
    expect(view.locator("[data-count='free']")).to_have_text(f"{cluster['free_count']:,} free")
    expect(view.locator("[data-count='held']")).to_have_text("12 held")
    expect(view.locator(".jp-DLInfra-clusterCount")).to_have_text(f"{NODES:,} nodes")
    # only the rows in view (and a few beyond) are in the page
    rows = view.locator(".jp-DLInfra-nodeRow")
    assert 5 <= rows.count() <= 60, rows.count()
    # every other seeded node is an H100 one (511 nodes), alice holds 4 GPUs of the first
    h100 = (NODES - 1) // 2
    expect(view.locator(f".jp-DLInfra-clusterModels li[data-model='{MODELS[1]}']")).to_have_text(
        f"{MODELS[1]}: {8 * h100 - 4} of {8 * h100} free"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    sidebar.screenshot(path=str(ARTIFACTS / "sidebar-1024-nodes.png"))

    # search: by node, then by user
    t0 = time.perf_counter()
    view.locator(".jp-DLInfra-clusterSearch").fill("node-0512")
    expect(view.locator(".jp-DLInfra-clusterCount")).to_have_text(f"1 of {NODES:,} nodes")
    filter_s = time.perf_counter() - t0
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-node", "node-0512")
    view.locator(".jp-DLInfra-clusterSearch").fill("alice")
    expect(view.locator(".jp-DLInfra-clusterCount")).to_have_text(f"2 of {NODES:,} nodes")
    expect(rows.nth(0).locator(".jp-DLInfra-cell.jp-mod-held")).to_have_count(8)

    # filters: nodes with free GPUs (all but alice's full one), one model
    view.locator(".jp-DLInfra-clusterSearch").fill("")
    view.locator(".jp-DLInfra-clusterFilter").select_option("free")
    expect(view.locator(".jp-DLInfra-clusterCount")).to_have_text(
        f"{NODES - 1:,} of {NODES:,} nodes"
    )
    view.locator(".jp-DLInfra-clusterFilter").select_option("all")
    view.locator(".jp-DLInfra-clusterModel").select_option(MODELS[1])
    expect(view.locator(".jp-DLInfra-clusterCount")).to_have_text(f"{h100:,} of {NODES:,} nodes")

    # scrolled to the end, the last node is drawn
    view.locator(".jp-DLInfra-clusterModel").select_option("")
    view.locator(".jp-DLInfra-nodeList").evaluate("list => { list.scrollTop = list.scrollHeight }")
    expect(view.locator(f".jp-DLInfra-nodeRow[data-node='{names[-1]}']")).to_have_count(1)
    assert rows.count() <= 60
    print(f"1,024 nodes: first render {first_render_s:.1f} s, search {filter_s * 1000:.0f} ms")
    assert first_render_s < 120 and filter_s < 10
