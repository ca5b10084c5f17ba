"""A real Prometheus server for tests and demos: scrapes given targets every second, on loopback.

    with SimulatedDcgmExporter({"node-a": 2}) as exporter:
        with PrometheusServer([exporter.target]) as prometheus:
            DcgmClient(prometheus.url).read()

Runs the ``prometheus`` binary (Debian: ``apt-get install prometheus``; or the upstream release
tarball with ``binary=``) in its own process group, with its configuration and TSDB in a temporary
directory that ``stop()`` removes. Nothing here is imported by the product.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jupyter_dlinfra.testing.server import free_port, wait_until

__all__ = [
    "PROMETHEUS_BINARY",
    "PrometheusServer",
    "PrometheusUnavailable",
    "find_prometheus",
    "wait_for_query",
]

#: where Debian's package puts it; PROMETHEUS_BINARY in the environment overrides
PROMETHEUS_BINARY = "/usr/bin/prometheus"


class PrometheusUnavailable(RuntimeError):
    """The prometheus binary is missing, or the server did not become ready."""


def find_prometheus(binary: str | None = None) -> str:
    """The path of a runnable prometheus binary, or PrometheusUnavailable saying how to get one."""
    candidate = binary or os.environ.get("PROMETHEUS_BINARY") or PROMETHEUS_BINARY
    found = shutil.which(candidate) or shutil.which("prometheus")
    if found is None:
        raise PrometheusUnavailable(
            f"no prometheus binary at {candidate} nor on PATH: apt-get install prometheus "
            "(or set PROMETHEUS_BINARY to an upstream release's binary)"
        )
    return found


class PrometheusServer:
    """A Prometheus that scrapes ``targets`` (``host:port``) every ``scrape_interval``.

    ``targets`` is a list of ``host:port``, or a mapping of ``host:port`` to extra labels that
    Prometheus attaches to every series scraped from it (``{"127.0.0.1:9400": {"cluster": "a"}}``),
    as Kubernetes service discovery would attach its own. ``url`` is the base URL of the HTTP API.
    """

    def __init__(
        self,
        targets: Sequence[str] | Mapping[str, Mapping[str, str]],
        *,
        scrape_interval: str = "1s",
        job: str = "dcgm-exporter",
        binary: str | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        if isinstance(targets, str):
            raise TypeError("targets is a list of host:port, not one string")
        self.targets: dict[str, dict[str, str]] = (
            {t: dict(labels) for t, labels in targets.items()}
            if isinstance(targets, Mapping)
            else {t: {} for t in targets}
        )
        self.scrape_interval = scrape_interval
        self.job = job
        self.binary = find_prometheus(binary)
        self.ready_timeout = ready_timeout
        self.port = 0
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the Prometheus server is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("the Prometheus server is not started")
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        static = [
            {"targets": [target], **({"labels": labels} if labels else {})}
            for target, labels in self.targets.items()
        ]
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [{"job_name": self.job, "static_configs": static}],
        }

    def start(self) -> PrometheusServer:
        if self.proc is not None:
            return self
        self.workdir = Path(tempfile.mkdtemp(prefix="dlinfra-prometheus-"))
        config = self.workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed
        config.write_text(json.dumps(self.config(), indent=2))
        self.port = free_port()
        cmd = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusUnavailable(
                    f"prometheus exited with status {self.proc.returncode} before it was ready:\n"
                    f"{self.log_text()[-3000:]}"
                )
            try:
                with self._opener.open(self.url + "/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        try:
            wait_until(ready, timeout=self.ready_timeout, interval=0.1, what="Prometheus /-/ready")
        except TimeoutError:
            tail = self.log_text()[-3000:]
            self.stop()
            raise PrometheusUnavailable(
                f"Prometheus was not ready within {self.ready_timeout:g} s:\n{tail}"
            ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (a test's own look at Prometheus)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self._opener.open(url, timeout=10) as response:
            doc = json.loads(response.read())
        if doc.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {doc}")
        return doc["data"]

    def targets_up(self) -> bool:
        """True once every target has been scraped successfully (health "up")."""
        active = self.api("targets", state="active").get("activeTargets", [])
        return len(active) == len(self.targets) and all(t.get("health") == "up" for t in active)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def stop(self, *, timeout: float = 20.0) -> None:
        """Kill the server and remove its directory. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_query(
    prometheus: PrometheusServer, promql: str, *, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Poll an instant query until it returns series (e.g. the first scrape has landed)."""

    def answered() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = prometheus.api("query", query=promql)["result"]
        return result

    found: list[dict[str, Any]] = wait_until(answered, timeout=timeout, interval=0.1, what=promql)
    return found
