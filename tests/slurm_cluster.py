"""A throw-away single-node SLURM for tests, with fake GPUs.

:func:`start_slurm` runs ``scripts/slurm-up.sh`` into a fresh temporary directory (its own
slurmctld, slurmd and munged on free ports), yields a :class:`SlurmCluster`, then runs
``scripts/slurm-down.sh`` (jobs cancelled, daemons stopped), keeps the daemons' logs under
``test-artifacts/slurm/`` and removes the directory (``DLINFRA_KEEP_SLURM=1`` keeps it).

:func:`slurm_cluster` is the session-scoped pytest fixture built on it; ``tests/conftest.py``
loads this module as a plugin, so that every directory shares one cluster per run. It fails,
never skips, when SLURM cannot be had: ``make test`` installs Debian's SLURM packages
(``scripts/test.sh``). :func:`slurm_two_nodes` is a second cluster, of two nodes (each slurmd in
its own network namespace, see ``scripts/slurm-up.sh``), started only for the tests that ask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["SlurmCluster", "SlurmUnavailable", "slurm_cluster", "slurm_two_nodes", "start_slurm"]

ROOT = Path(__file__).resolve().parent.parent
UP = ROOT / "scripts" / "slurm-up.sh"
DOWN = ROOT / "scripts" / "slurm-down.sh"
ARTIFACTS = ROOT / "test-artifacts" / "slurm"

#: the binaries slurm-up.sh needs (it would install them; tests must not)
REQUIRED = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "munged")

#: the states of jobs that are not over
ACTIVE_STATES = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"


class SlurmUnavailable(RuntimeError):
    """No SLURM cluster can be started here."""


@dataclass(frozen=True)
class SlurmCluster:
    #: everything of the cluster: etc/, log/, spool/, dev/ (the fake GPUs), munge/
    directory: Path
    #: its slurm.conf
    conf: Path
    #: how many fake GPUs its node has (GRES "gpu")
    ngpu: int
    #: the environment the SLURM tools need to reach it: {"SLURM_CONF": ...}
    env: dict[str, str] = field(default_factory=dict)
    #: its nodes' names
    nodes: tuple[str, ...] = ()

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM tool (squeue, scontrol...) against this cluster."""
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def job_ids(
        self, states: str = "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"
    ) -> list[str]:
        out = self.run("squeue", "--noheader", f"--states={states}", "--format=%i").stdout
        return out.split()

    def cancel_all(self, timeout: float = 15.0) -> None:
        """Cancel every job still pending or running and wait until none runs."""
        import time

        ids = self.job_ids()
        if ids:
            self.run("scancel", *ids, check=False)
        deadline = time.monotonic() + timeout
        while self.job_ids() and time.monotonic() < deadline:
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in sorted((self.directory / "log").glob("slurm*.log")):
            name = path.name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(parts)


def missing_binaries() -> list[str]:
    return [name for name in REQUIRED if shutil.which(name) is None]


@contextlib.contextmanager
def start_slurm(ngpu: int = 4, nodes: int = 1) -> Iterator[SlurmCluster]:
    """A running cluster of ``nodes`` nodes with ``ngpu`` fake GPUs each for the duration of
    the block."""
    missing = missing_binaries()
    if missing:
        raise SlurmUnavailable(
            f"SLURM is not installed here (missing: {', '.join(missing)}); run `make test`, "
            "which installs Debian's slurmctld, slurmd, slurm-client and munge"
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test SLURM cluster needs root (slurmd starts jobs as users)")
    # a short path: the munge socket's path must fit in a UNIX socket address
    directory = Path(tempfile.mkdtemp(prefix="dlinfra-slurm-", dir="/tmp"))
    env = {
        **os.environ,
        "SLURM_TEST_DIR": str(directory),
        "NGPU": str(ngpu),
        "SLURM_NODES": str(nodes),
    }
    started = False
    try:
        proc = subprocess.run(
            ["bash", str(UP)], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        started = True
        conf = directory / "etc" / "slurm.conf"
        if proc.returncode != 0 or f"SLURM_CONF={conf}" not in proc.stdout:
            raise SlurmUnavailable(
                f"scripts/slurm-up.sh failed (exit status {proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        cluster = SlurmCluster(
            directory=directory, conf=conf, ngpu=ngpu, env={"SLURM_CONF": str(conf)}
        )
        listed = cluster.run("sinfo", "--noheader", "--Node", "--format=%N").stdout.split()
        yield dataclasses.replace(cluster, nodes=tuple(sorted(set(listed))))
    finally:
        if started:
            subprocess.run(
                ["bash", str(DOWN)], env=env, capture_output=True, timeout=120, check=False
            )
            with contextlib.suppress(OSError):
                kept = ARTIFACTS if nodes == 1 else ARTIFACTS / f"{nodes}-nodes"
                kept.mkdir(parents=True, exist_ok=True)
                for log in (directory / "log").glob("*.log"):
                    shutil.copy(log, kept / log.name)
        if os.environ.get("DLINFRA_KEEP_SLURM", "").strip() != "1":
            shutil.rmtree(directory, ignore_errors=True)


def _cluster(ngpu: int, nodes: int) -> Iterator[SlurmCluster]:
    try:
        with start_slurm(ngpu=ngpu, nodes=nodes) as cluster:
            yield cluster
            return
    except SlurmUnavailable as err:
        error = str(err)
    pytest.fail(f"SLURM unavailable: {error}", pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real single-node SLURM with 4 fake GPUs for the whole session; fails if unavailable."""
    yield from _cluster(4, 1)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """A real SLURM of two nodes (dln1, dln2) with 2 fake GPUs each; fails if unavailable."""
    yield from _cluster(2, 2)
