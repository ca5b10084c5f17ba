"""A simulated NVIDIA DCGM exporter: ``/metrics`` as dcgm-exporter writes it, for GPUs that are not.

For tests and demos of cluster telemetry on machines without GPUs: a real Prometheus scrapes it like
the exporter of a GPU node, and ``jupyter_dlinfra.telemetry.dcgm`` reads it back through
Prometheus' HTTP API. One server stands for the exporters of several nodes (their series differ by
``Hostname`` and ``UUID``, as they would in Prometheus once scraped)::

    with SimulatedDcgmExporter({"gpu-node-a": 4, "gpu-node-b": ("NVIDIA-H100-80GB-HBM3", 2)}) as ex:
        ex.set(("gpu-node-a", 0), util=85, fb_used_mib=20_000, pod="train-0", namespace="team")
        ...  # scrape ex.target

The DCGM series are the exporter's, label for label; nothing in them says "simulated", so that the
reader under test sees exactly what it sees in production. The simulation is labelled instead by one
extra metric that no DCGM exporter serves, ``dlinfra_simulated_dcgm_exporter 1``: the DCGM client
asks for it in its query and reports ``simulated=True``, which the API and the UI then show.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jupyter_dlinfra.telemetry.dcgm import (
    DCGM_FB_FREE,
    DCGM_FB_USED,
    DCGM_GPU_UTIL,
    DCGM_GR_ENGINE_ACTIVE,
    SIMULATED_MARKER,
)

__all__ = ["SimulatedDcgmExporter", "SimulatedDcgmGpu", "simulated_uuid"]

# the same namespace as the simulated provider's: a node's simulated GPUs keep their UUIDs
_UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_DNS, "simulated-gpu.jupyter-dlinfra")
_DRIVER = "550.54.15"
_DEFAULT_MODEL = "NVIDIA A100-SXM4-80GB"
_DEFAULT_MEMORY_MIB = 81920
_UNSET: Any = object()

# (metric, help) as in dcgm-exporter's default-counters.csv and dcp-metrics-included.csv
_HELP = {
    DCGM_GPU_UTIL: "GPU utilization (in %).",
    DCGM_FB_FREE: "Framebuffer memory free (in MiB).",
    DCGM_FB_USED: "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    DCGM_GR_ENGINE_ACTIVE: "Ratio of time the graphics engine is active.",
}


@dataclass(frozen=True, kw_only=True)
class SimulatedDcgmGpu:
    """One simulated GPU and its current readings."""

    node: str
    index: int
    uuid: str
    model: str
    memory_mib: int
    util: float = 0.0
    fb_used_mib: int = 0
    #: 0-1; None: this GPU's exporter does not watch profiling metrics
    gr_engine_active: float | None = None
    pod: str | None = None
    namespace: str | None = None
    container: str | None = None

    @property
    def fb_free_mib(self) -> int:
        return max(0, self.memory_mib - self.fb_used_mib)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def simulated_uuid(node: str, index: int) -> str:
    """The UUID the simulator gives GPU ``index`` of ``node`` (stable across runs)."""
    return f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{node}/{index}')}"


class SimulatedDcgmExporter:
    """An HTTP server on loopback that serves simulated dcgm-exporter metrics at ``/metrics``.

    ``nodes`` maps node names to a GPU count, or to ``(model, count)``. ``profiling`` makes every
    GPU also serve ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (following ``util`` unless set apart), as an
    exporter run with the DCP metrics does. Readings change at runtime with ``set``; the server
    thread reads them under a lock. ``uuid_for(node, index)`` names the GPUs (to agree with what a
    fake device plugin hands to pods, say); the default gives stable ``GPU-<uuid5>`` UUIDs.
    """

    def __init__(
        self,
        nodes: Mapping[str, int | tuple[str, int]] | None = None,
        *,
        memory_mib: int = _DEFAULT_MEMORY_MIB,
        profiling: bool = False,
        uuid_for: Callable[[str, int], str] = simulated_uuid,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._gpus: dict[str, SimulatedDcgmGpu] = {}
        self._profiling = profiling
        self._memory_mib = memory_mib
        self._uuid_for = uuid_for
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: how many times /metrics was served (a scrape reached us)
        self.scrapes = 0
        for node, spec in (nodes or {}).items():
            model, count = spec if isinstance(spec, tuple) else (_DEFAULT_MODEL, spec)
            self.add_node(node, count, model=model)

    # -- GPUs ------------------------------------------------------------------------------------

    def add_node(self, node: str, count: int, *, model: str = _DEFAULT_MODEL) -> list[str]:
        """Add ``count`` GPUs on ``node`` (indexes after its existing ones); returns their UUIDs."""
        if count < 0:
            raise ValueError(f"a node has 0 or more GPUs, got {count}")
        with self._lock:
            start = sum(1 for g in self._gpus.values() if g.node == node)
            added = []
            for index in range(start, start + count):
                gpu = SimulatedDcgmGpu(
                    node=node,
                    index=index,
                    uuid=self._uuid_for(node, index),
                    model=model,
                    memory_mib=self._memory_mib,
                    gr_engine_active=0.0 if self._profiling else None,
                )
                self._gpus[gpu.uuid] = gpu
                added.append(gpu.uuid)
        return added

    def remove_node(self, node: str) -> None:
        """The node's exporter is gone: its series disappear from ``/metrics``."""
        with self._lock:
            for key in [k for k, g in self._gpus.items() if g.node == node]:
                del self._gpus[key]

    def gpus(self) -> list[SimulatedDcgmGpu]:
        with self._lock:
            return sorted(self._gpus.values(), key=lambda g: (g.node, g.index))

    def gpu(self, key: str | tuple[str, int]) -> SimulatedDcgmGpu:
        with self._lock:
            return self._resolve(key)

    def set(
        self,
        key: str | tuple[str, int],
        *,
        util: float | None = None,
        fb_used_mib: int | None = None,
        gr_engine_active: float | None = _UNSET,
        pod: str | None = _UNSET,
        namespace: str | None = _UNSET,
        container: str | None = _UNSET,
    ) -> SimulatedDcgmGpu:
        """Change a GPU's readings; ``key`` is its UUID or ``(node, index)``.

        ``util`` is a percentage; on a profiling exporter it also moves ``gr_engine_active`` to
        ``util / 100`` unless that is given too (None stops serving it for this GPU). ``pod``
        (with ``namespace`` and ``container``) is the pod the exporter maps the GPU to; None clears.
        """
        if util is not None and not 0.0 <= util <= 100.0:
            raise ValueError(f"utilisation must be within 0-100 %, got {util}")
        if gr_engine_active not in (_UNSET, None) and not 0.0 <= gr_engine_active <= 1.0:
            raise ValueError(f"GR engine activity is a ratio within 0-1, got {gr_engine_active}")
        with self._lock:
            gpu = self._resolve(key)
            changes: dict[str, Any] = {}
            if util is not None:
                changes["util"] = float(util)
                if gpu.gr_engine_active is not None and gr_engine_active is _UNSET:
                    changes["gr_engine_active"] = float(util) / 100.0
            if fb_used_mib is not None:
                if not 0 <= fb_used_mib <= gpu.memory_mib:
                    raise ValueError(
                        f"memory used must be within 0-{gpu.memory_mib} MiB, got {fb_used_mib}"
                    )
                changes["fb_used_mib"] = int(fb_used_mib)
            if gr_engine_active is not _UNSET:
                changes["gr_engine_active"] = gr_engine_active
            if pod is not _UNSET:
                changes["pod"] = pod
                if pod is None:
                    changes["namespace"] = changes["container"] = None
            if namespace is not _UNSET:
                changes["namespace"] = namespace
            if container is not _UNSET:
                changes["container"] = container
            updated = replace(gpu, **changes)
            self._gpus[gpu.uuid] = updated
            return updated

    def _resolve(self, key: str | tuple[str, int]) -> SimulatedDcgmGpu:
        if isinstance(key, str):
            gpu = self._gpus.get(key)
        else:
            node, index = key
            gpu = next((g for g in self._gpus.values() if (g.node, g.index) == (node, index)), None)
        if gpu is None:
            known = ", ".join(f"{g.node}/{g.index}" for g in self._gpus.values()) or "none"
            raise KeyError(f"no simulated GPU {key!r} (known: {known})")
        return gpu

    # -- the exposition text ----------------------------------------------------------------------

    def render(self) -> str:
        """``/metrics`` as dcgm-exporter writes it (text format 0.0.4), with the simulation mark."""
        gpus = self.gpus()
        values: dict[str, list[tuple[SimulatedDcgmGpu, str]]] = {name: [] for name in _HELP}
        for gpu in gpus:
            values[DCGM_GPU_UTIL].append((gpu, f"{round(gpu.util):d}"))
            values[DCGM_FB_FREE].append((gpu, f"{gpu.fb_free_mib:d}"))
            values[DCGM_FB_USED].append((gpu, f"{gpu.fb_used_mib:d}"))
            values["DCGM_FI_DEV_GPU_TEMP"].append((gpu, f"{30 + round(gpu.util / 2):d}"))
            values["DCGM_FI_DEV_POWER_USAGE"].append((gpu, f"{60 + 3.4 * gpu.util:f}"))
            if gpu.gr_engine_active is not None:
                values[DCGM_GR_ENGINE_ACTIVE].append((gpu, f"{gpu.gr_engine_active:f}"))
        lines: list[str] = []
        for name, help_text in _HELP.items():
            if not values[name]:
                continue
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.extend(f"{name}{{{self._labels(gpu)}}} {value}" for gpu, value in values[name])
        lines.append(
            f"# HELP {SIMULATED_MARKER} 1: these DCGM metrics are simulated by jupyter-dlinfra, "
            "no GPU was read."
        )
        lines.append(f"# TYPE {SIMULATED_MARKER} gauge")
        lines.append(f"{SIMULATED_MARKER} 1")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _labels(gpu: SimulatedDcgmGpu) -> str:
        pairs = [
            ("gpu", str(gpu.index)),
            ("UUID", gpu.uuid),
            ("pci_bus_id", f"00000000:{0x07 + gpu.index * 8:02X}:00.0"),
            ("device", f"nvidia{gpu.index}"),
            ("modelName", gpu.model),
            ("Hostname", gpu.node),
            ("DCGM_FI_DRIVER_VERSION", _DRIVER),
        ]
        # the exporter adds the pod attributes only for GPUs it maps to a pod
        if gpu.pod:
            pairs += [
                ("container", gpu.container or ""),
                ("namespace", gpu.namespace or ""),
                ("pod", gpu.pod),
            ]
        return ",".join(f'{k}="{_quote(v)}"' for k, v in pairs)

    # -- serving --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulated DCGM exporter is not started")
        return int(self._server.server_address[1])

    @property
    def target(self) -> str:
        """``host:port``, as a Prometheus scrape config names it."""
        return f"{self._host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def start(self) -> SimulatedDcgmExporter:
        if self._server is not None:
            return self
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "dcgm-exporter serves /metrics")
                    return
                body = exporter.render().encode()
                exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_error(404, "dcgm-exporter serves GET /metrics only")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape a second would flood the test output

        server = ThreadingHTTPServer((self._host, self._port), Handler)
        server.daemon_threads = True
        self._server = server
        # a restart after stop() serves on the same port, as an exporter pod coming back would
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, name="simulated-dcgm-exporter", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (a later scrape fails, as when an exporter pod dies). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> SimulatedDcgmExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
