"""``GET /dlinfra/metrics``: Prometheus text from a real server, parsed by prometheus_client."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from server_kit import register
from tornado.httpclient import HTTPClientError

from jupyter_dlinfra.server.metrics import registry_for


async def scrape(jp_fetch: Any) -> dict[str, list[Sample]]:
    response = await jp_fetch("dlinfra", "metrics")
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = text_string_to_metric_families(response.body.decode())
    return {f.name: f.samples for f in families}


def values(samples: list[Sample], name: str | None = None) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for s in samples if name is None or s.name == name]


async def test_a_scrape_shows_gpus_holders_queue_and_waits(
    jp_fetch: Any, api: Any, dlinfra_app: Any
) -> None:
    service = dlinfra_app.service
    user = service.settings.user
    register(dlinfra_app, "k1")
    register(dlinfra_app, "k2")
    _, granted = await api("POST", "allocations", {"kernel_id": "k1", "count": 2})
    _, queued = await api("POST", "allocations", {"kernel_id": "k2", "count": 3})
    assert (granted["state"], queued["state"]) == ("granted", "queued")

    metrics = await scrape(jp_fetch)
    util = values(metrics["dlinfra_gpu_utilization_percent"])
    assert len(util) == 4 and all(0 <= v <= 100 for _, v in util)
    assert {labels["simulated"] for labels, _ in util} == {"true"}
    assert sorted(labels["index"] for labels, _ in util) == ["0", "1", "2", "3"]
    assert len(values(metrics["dlinfra_gpu_memory_used_bytes"])) == 4
    totals = values(metrics["dlinfra_gpu_memory_total_bytes"])
    assert [v for _, v in totals] == [80 * 2**30] * 4

    allocated = values(metrics["dlinfra_gpu_allocated"])
    held = {labels["uuid"]: labels["user"] for labels, v in allocated if v == 1}
    assert held == {g["uuid"]: user for g in granted["gpus"]}
    assert sum(1 for labels, v in allocated if v == 0 and labels["user"] == "") == 2
    assert values(metrics["dlinfra_allocated_gpus"]) == [({"user": user}, 2.0)]
    assert values(metrics["dlinfra_queue_length"]) == [({}, 1.0)]
    [(labels, waited)] = values(metrics["dlinfra_queue_wait_seconds"])
    assert labels == {"allocation_id": str(queued["id"]), "user": user, "node": queued["node"]}
    assert 0 <= waited < 60
    hist = metrics["dlinfra_grant_wait_seconds"]
    assert values(hist, "dlinfra_grant_wait_seconds_count") == [({}, 1.0)]
    assert ({"le": "0.1"}, 1.0) in values(hist, "dlinfra_grant_wait_seconds_bucket")
    samples = values(metrics["dlinfra_telemetry_samples"], "dlinfra_telemetry_samples_total")
    assert samples == [({}, float(service.sampling_calls))]

    # the release grants the queued request: the scrape after it sees the new state at once
    await api("DELETE", f"allocations/{granted['id']}")
    await service.sample()
    metrics = await scrape(jp_fetch)
    assert values(metrics["dlinfra_allocated_gpus"]) == [({"user": user}, 3.0)]
    assert values(metrics["dlinfra_queue_length"]) == [({}, 0.0)]
    assert values(metrics["dlinfra_queue_wait_seconds"]) == []
    hist = metrics["dlinfra_grant_wait_seconds"]
    assert values(hist, "dlinfra_grant_wait_seconds_count") == [({}, 2.0)]
    [(_, total)] = values(hist, "dlinfra_grant_wait_seconds_sum")
    assert total > 0
    samples = values(metrics["dlinfra_telemetry_samples"], "dlinfra_telemetry_samples_total")
    assert samples == [({}, float(service.sampling_calls))] and service.sampling_calls >= 2


async def test_metrics_need_authentication(jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("dlinfra", "metrics", headers={"Authorization": ""})
    assert info.value.code == 403


async def test_each_server_has_its_own_registry(dlinfra_app: Any) -> None:
    service = dlinfra_app.service
    await service.events.current()
    mine, another = registry_for(service), registry_for(service)
    assert mine is not another
    assert b"dlinfra_queue_length" in generate_latest(mine)
    assert b"dlinfra_" not in generate_latest(REGISTRY), "nothing leaks into the global registry"


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dlinfra-dashboard.json"
RULES = DEPLOY / "prometheus" / "dlinfra-rules.yml"
#: a metric or recording-rule name of ours inside a PromQL expression
_OURS = re.compile(r"\bdlinfra[_:][A-Za-z0-9_:]*")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        found = []
        for panel in panels:
            found += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
            found += walk(panel.get("panels", []))
        return found

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def _promtool(*args: str, cwd: Path) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/test.sh installs Debian's prometheus"
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_the_dashboard_and_the_rules_query_only_series_we_export(
    jp_fetch: Any, api: Any, dlinfra_app: Any, tmp_path: Path
) -> None:
    register(dlinfra_app, "k1")
    register(dlinfra_app, "k2")
    await api("POST", "allocations", {"kernel_id": "k1", "count": 2})
    await api("POST", "allocations", {"kernel_id": "k2", "count": 3})
    await dlinfra_app.service.sample()
    response = await jp_fetch("dlinfra", "metrics")
    exported = {
        f.name + suffix
        for f in text_string_to_metric_families(response.body.decode())
        for suffix in _SUFFIXES[f.type]
    }
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"]}
    rule_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs + rule_exprs:
        for name in _OURS.findall(expr):
            known = recorded if ":" in name else exported
            assert name in known, f"{name} (in {expr!r}) is not a series we export or record"
    # every recording rule feeds the dashboard
    assert recorded <= {n for e in exprs for n in _OURS.findall(e)}

    # each query parses as PromQL: promtool reads the dashboard's as recording rules
    checked = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(checked))
    assert f"{len(exprs)} rules found" in _promtool(
        "check", "rules", "dashboard-rules.yml", cwd=tmp_path
    )
    assert f"{len(recorded)} rules found" in _promtool(
        "check", "rules", RULES.name, cwd=RULES.parent
    )
    # the rules compute what they say on a known cluster
    assert "SUCCESS" in _promtool("test", "rules", "dlinfra-rules.test.yml", cwd=RULES.parent)
