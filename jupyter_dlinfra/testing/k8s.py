"""A real single-machine Kubernetes control plane for tests, benchmarks and demos.

:class:`ControlPlane` runs etcd (Debian's ``/usr/bin/etcd``) and kube-apiserver, kube-scheduler and
kube-controller-manager v1.20.2 (built once per machine by ``scripts/k8s/build.sh`` into
``/var/cache/dlinfra-k8s/bin``, or ``$DLINFRA_K8S_BIN``) as subprocesses on 127.0.0.1, each on a
free port chosen at :meth:`ControlPlane.start`, so several control planes can run side by side (a
pytest session and a benchmark). Everything it writes (certificates, keys, etcd's data, one log per
component, the kubeconfig) lives in its ``workdir``.

- Authentication: one static bearer token (``ControlPlane.token``) in group ``system:masters``;
  authorisation is ``Node,RBAC``. The kubeconfig skips TLS verification (the serving certificate is
  the apiserver's self-signed one).
- Admission: the apiserver's defaults (so ``Priority`` resolves ``priorityClassName`` and
  ``TaintNodesByCondition`` taints new nodes not-ready) minus ``ServiceAccount``, so pods need no
  service-account token volume.
- Controllers: job, namespace, garbagecollector, serviceaccount, serviceaccount-token,
  ttl-after-finished and persistentvolume-binder (so a PersistentVolumeClaim binds to a
  PersistentVolume a test creates). There is no node-lifecycle controller: nothing marks a node
  NotReady or evicts its pods.

There is no kubelet: :class:`~jupyter_dlinfra.testing.kubelet.NodeAgent` (re-exported here) plays
the kubelet of fake GPU nodes and runs their pods as local processes.

From a shell, ``python -m jupyter_dlinfra.testing.k8s up --dir DIR --nodes gpu-a=4,gpu-b=2`` (or
``scripts/k8s/up.sh``) starts a control plane and a node agent in the foreground and prints the
``KUBECONFIG=...`` line to use against it until interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import kubernetes.client
import urllib3
import yaml

from jupyter_dlinfra.testing.kubelet import FakeNode, NodeAgent
from jupyter_dlinfra.testing.server import StartStop

__all__ = [
    "DEFAULT_BIN_DIR",
    "ControlPlane",
    "FakeNode",
    "K8sUnavailable",
    "NodeAgent",
    "k8s_bin_dir",
    "main",
]

log = logging.getLogger("jupyter_dlinfra.testing.k8s")

#: where ``scripts/k8s/build.sh`` puts the binaries unless told otherwise
DEFAULT_BIN_DIR = Path("/var/cache/dlinfra-k8s/bin")

#: the Kubernetes binaries a control plane needs from :func:`k8s_bin_dir`
BINARIES = ("kube-apiserver", "kube-scheduler", "kube-controller-manager")

CONTROLLERS = (
    "job",
    "namespace",
    "garbagecollector",
    "serviceaccount",
    "serviceaccount-token",
    "ttl-after-finished",
    "persistentvolume-binder",
)

#: how a component says that the port it was given was taken between choosing and binding it
_PORT_TAKEN = ("address already in use", "bind: address")


class K8sUnavailable(RuntimeError):
    """No control plane can be started here (binaries, etcd or openssl missing)."""


def k8s_bin_dir() -> Path:
    """The directory with kube-apiserver, kube-scheduler and kube-controller-manager."""
    env = os.environ.get("DLINFRA_K8S_BIN", "").strip()
    return Path(env) if env else DEFAULT_BIN_DIR


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _insecure_opener() -> urllib.request.OpenerDirector:
    """An opener for the components' self-signed HTTPS endpoints that ignores proxy variables."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )


class _Component:
    """One control-plane process and its log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ControlPlane(StartStop):
    """etcd + kube-apiserver + kube-scheduler + kube-controller-manager on 127.0.0.1.

    ``start()`` returns once the apiserver is ready and the scheduler and controller-manager serve
    their health checks; ``stop()`` (idempotent) ends them all. Also a context manager.
    """

    def __init__(self, workdir: Path, *, bin_dir: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.bin_dir = bin_dir if bin_dir is not None else k8s_bin_dir()
        #: the bearer token of the cluster admin (group system:masters)
        self.token = secrets.token_hex(16)
        #: kubeconfig for the admin, written by start()
        self.kubeconfig = self.workdir / "kubeconfig"
        #: ``https://127.0.0.1:PORT`` of the apiserver, set by start()
        self.url = ""
        self.ports: dict[str, int] = {}
        self._components: list[_Component] = []
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start every component and wait (at most ``timeout`` s) until all serve."""
        etcd = self._check_prerequisites()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_keys()
        deadline = time.monotonic() + timeout
        atexit.register(self.stop)  # not left behind by a process that forgets stop()
        for attempt in range(3):
            try:
                self._start_once(etcd, deadline)
                return
            except _PortTaken as err:
                log.warning("control plane: %s; retrying with other ports (%d)", err, attempt + 1)
                self.stop()
            except BaseException:
                self.stop()
                raise
        raise RuntimeError("could not start the control plane: its ports kept being taken")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the components one by one, newest first (the apiserver before etcd, which it
        needs to shut down cleanly): SIGTERM, then SIGKILL after ``timeout`` s."""
        atexit.unregister(self.stop)
        with self._lock:
            components, self._components = self._components, []
        for comp in reversed(components):
            if comp.proc is not None:
                comp.signal(signal.SIGTERM)
                try:
                    comp.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("control plane: %s ignored SIGTERM; killing it", comp.name)
                    comp.signal(signal.SIGKILL)
                    comp.proc.wait()
                # anything it left in its process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(comp.proc.pid, signal.SIGKILL)
            comp.close()

    @property
    def running(self) -> bool:
        return bool(self._components)

    def log_files(self) -> list[Path]:
        """The components' log files (those that exist)."""
        return sorted(self.workdir.glob("*.log"))

    # -- clients -----------------------------------------------------------------------------

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new client for the apiserver, configured from :attr:`kubeconfig`; never proxied."""
        doc: Any = yaml.safe_load(self.kubeconfig.read_text())
        context_name = doc["current-context"]
        context = next(c["context"] for c in doc["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
        config = kubernetes.client.Configuration(
            host=cluster["server"],
            api_key={"BearerToken": user["token"]},
            api_key_prefix={"BearerToken": "Bearer"},
        )
        config.verify_ssl = not cluster.get("insecure-skip-tls-verify", False)
        config.proxy = None
        config.no_proxy = "*"
        return kubernetes.client.ApiClient(config)

    # -- internals ---------------------------------------------------------------------------

    def _check_prerequisites(self) -> str:
        missing = [name for name in BINARIES if not os.access(self.bin_dir / name, os.X_OK)]
        if missing:
            raise K8sUnavailable(
                f"Kubernetes binaries missing from {self.bin_dir}: {', '.join(missing)}. "
                "Build them once per machine with `scripts/k8s/build.sh` (kube-apiserver, "
                "kube-scheduler and kube-controller-manager v1.20.2 from Debian's source package; "
                "it also installs etcd-server and openssl), or point DLINFRA_K8S_BIN at a "
                "directory that has them."
            )
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.access(etcd, os.X_OK):
            raise K8sUnavailable(
                "etcd is not installed: run `scripts/k8s/build.sh` "
                "(or `apt-get install etcd-server`)"
            )
        if shutil.which("openssl") is None:
            raise K8sUnavailable(
                "openssl is not installed: run `scripts/k8s/build.sh` "
                "(or `apt-get install openssl`)"
            )
        return etcd

    def _write_keys(self) -> None:
        key, pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        if not (key.exists() and pub.exists()):
            subprocess.run(
                ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
            )
            subprocess.run(
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
                check=True,
                capture_output=True,
            )
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f"{self.token},admin,admin,system:masters\n")
        tokens.chmod(0o600)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dlinfra",
                    "cluster": {"server": self.url, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "dlinfra", "context": {"cluster": "dlinfra", "user": "admin"}}],
            "current-context": "dlinfra",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _start_once(self, etcd: str, deadline: float) -> None:
        w = self.workdir
        client, peer, api, sched, cm = _free_ports(5)
        self.ports = {
            "etcd": client,
            "etcd-peer": peer,
            "apiserver": api,
            "scheduler": sched,
            "controller-manager": cm,
        }
        self.url = f"https://127.0.0.1:{api}"
        self._write_kubeconfig()
        shutil.rmtree(w / "etcd-data", ignore_errors=True)
        etcd_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._launch(
            "etcd",
            [
                etcd,
                "--name=dlinfra",
                f"--data-dir={w / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dlinfra={peer_url}",
                "--initial-cluster-state=new",
            ],
        )
        self._wait_http("etcd", f"{etcd_url}/health", deadline, expect=b"true")
        b = self.bin_dir
        self._launch(
            "apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api}",
                f"--cert-dir={w / 'certs'}",
                f"--token-auth-file={w / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={w / 'sa.pub'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                # the node agent's log endpoint is reached at its InternalIP (127.0.0.1)
                "--kubelet-preferred-address-types=InternalIP",
            ],
        )
        self._wait_http("apiserver", f"{self.url}/readyz", deadline, auth=True, expect=b"ok")
        self._wait_http(
            "apiserver", f"{self.url}/api/v1/namespaces/default", deadline, auth=True, expect=b"{"
        )
        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--port=0",  # no insecure port: 1.20 would take the fixed 10251/10252
        ]
        self._launch("scheduler", [str(b / "kube-scheduler"), *common, f"--secure-port={sched}"])
        self._launch(
            "controller-manager",
            [
                str(b / "kube-controller-manager"),
                *common,
                f"--secure-port={cm}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={w / 'sa.key'}",
                "--use-service-account-credentials=false",
            ],
        )
        self._wait_http("scheduler", f"https://127.0.0.1:{sched}/healthz", deadline, expect=b"ok")
        self._wait_http(
            "controller-manager", f"https://127.0.0.1:{cm}/healthz", deadline, expect=b"ok"
        )
        log.info("control plane up at %s (workdir %s)", self.url, w)

    def _launch(self, name: str, argv: list[str]) -> None:
        comp = _Component(name, argv, self.workdir / f"{name}.log")
        with self._lock:
            self._components.append(comp)
        comp.start()

    def _component(self, name: str) -> _Component:
        return next(c for c in self._components if c.name == name)

    def _wait_http(
        self, name: str, url: str, deadline: float, *, auth: bool = False, expect: bytes
    ) -> None:
        """Poll ``url`` until it answers 200 with ``expect`` in the body; fail fast on exit."""
        opener = _insecure_opener()
        comp = self._component(name)
        last = ""
        while True:
            code = comp.exited()
            if code is not None:
                tail = comp.log_tail()
                if any(marker in tail for marker in _PORT_TAKEN):
                    raise _PortTaken(f"{name} could not bind its port")
                raise RuntimeError(
                    f"{name} exited with status {code} while starting; "
                    f"last lines of {comp.log_path}:\n{tail}"
                )
            request = urllib.request.Request(url)
            if auth:
                request.add_header("Authorization", f"Bearer {self.token}")
            try:
                with opener.open(request, timeout=5) as response:
                    body = response.read()
                    if response.status == 200 and expect in body:
                        return
                    last = f"HTTP {response.status}: {body[:200]!r}"
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}: {err.read()[:300]!r}"
            except (OSError, ssl.SSLError) as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{name} not ready at {url} in time (last answer: {last}); "
                    f"last lines of {comp.log_path}:\n{comp.log_tail()}"
                )
            time.sleep(0.1)


class _PortTaken(RuntimeError):
    pass


# -- command line ------------------------------------------------------------------------------


def _parse_nodes(spec: str) -> list[FakeNode]:
    """``gpu-a=4,gpu-b=2:NVIDIA-H100-80GB-HBM3`` -> nodes (``name=GPUS[:MODEL]``)."""
    nodes = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, rest = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"bad node {item!r}: use NAME=GPUS[:MODEL]")
        count, _, model = rest.partition(":")
        try:
            gpus = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad GPU count in {item!r}") from None
        node = FakeNode(name=name, gpus=gpus)
        nodes.append(dataclasses.replace(node, model=model) if model else node)
    return nodes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_dlinfra.testing.k8s",
        description="Run a local Kubernetes control plane (and fake GPU nodes) in the foreground.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start it and stay up until SIGINT/SIGTERM")
    up.add_argument("--dir", type=Path, required=True, help="work directory (logs, kubeconfig)")
    up.add_argument(
        "--nodes",
        type=_parse_nodes,
        default=[],
        help="fake GPU nodes run by a node agent: NAME=GPUS[:MODEL],... (e.g. gpu-a=4,gpu-b=2)",
    )
    up.add_argument("--timeout", type=float, default=120.0, help="start timeout in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # the apiserver's certificate is self-signed; the kubeconfig says not to verify it
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    workdir: Path = args.dir.resolve()
    plane = ControlPlane(workdir)
    agent: NodeAgent | None = None
    try:
        started = time.monotonic()
        plane.start(timeout=args.timeout)
        if args.nodes:
            agent = NodeAgent(plane.api_client(), args.nodes, workdir=workdir / "agent")
            agent.start()
        log.info("up in %.1f s", time.monotonic() - started)
        print(f"KUBECONFIG={plane.kubeconfig}", flush=True)
        while not stop.wait(1.0):
            pass
    except K8sUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if agent is not None:
            agent.stop()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
