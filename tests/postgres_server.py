"""A throw-away PostgreSQL server for tests: initdb into a fresh temporary directory, serve on
127.0.0.1 on a free port with ``trust`` authentication, hand out a SQLAlchemy URL, then stop the
server and remove everything.

The binaries (``initdb``, ``pg_ctl``, ``postgres``, ``createdb``) are found with
``pg_config --bindir``, else under ``/usr/lib/postgresql/*/bin``. ``initdb`` refuses to run as
root, so as root they run as the ``postgres`` OS user through ``runuser``.

This module does not depend on pytest: it raises :class:`PostgresUnavailable` when no server can
be had, and the fixtures decide whether that fails the run or (with ``DLINFRA_SKIP_POSTGRES=1``)
skips the tests that need it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SKIP_ENV",
    "PostgresServer",
    "PostgresUnavailable",
    "find_bindir",
    "postgres_optional",
    "run_postgres",
    "start_postgres",
]

#: set to 1 to skip (rather than fail) the PostgreSQL tests where no server can be started
SKIP_ENV = "DLINFRA_SKIP_POSTGRES"

_REQUIRED = ("initdb", "pg_ctl", "postgres", "createdb")
_OS_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (binaries, OS user or driver missing)."""


def postgres_optional() -> bool:
    """Whether a missing PostgreSQL may skip tests instead of failing them."""
    return os.environ.get(SKIP_ENV, "").strip() == "1"


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); newest major version first when sorted in reverse
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and createdb, or None."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _REQUIRED):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Runner:
    """Runs the PostgreSQL binaries as ``postgres`` when we are root, else as ourselves."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                entry = pwd.getpwnam(_OS_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, but there is no '{_OS_USER}' OS user to run initdb as "
                    "(initdb refuses root)"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, but `runuser` is not installed")
            os.chown(workdir, entry.pw_uid, entry.pw_gid)

    def __call__(self, name: str, *args: str, timeout: float = 120) -> str:
        argv: Sequence[str] = [str(self.bindir / name), *args]
        if self.as_root:
            argv = ["runuser", "-u", _OS_USER, "--", *argv]
        env = dict(os.environ, LC_ALL="C", LANG="C")
        proc = subprocess.run(
            argv,
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(argv)}` failed with status {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout


def _pg_ctl_start(run: _Runner, datadir: Path, logfile: Path, port: int) -> None:
    run(
        "pg_ctl",
        "-D",
        str(datadir),
        "-l",
        str(logfile),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port}",
        "start",
    )


def _start(run: _Runner, datadir: Path, logfile: Path) -> int:
    """Start the server on a free port; retry when another process took the port meanwhile."""
    last: Exception | None = None
    for _attempt in range(5):
        port = _free_port()
        try:
            _pg_ctl_start(run, datadir, logfile, port)
        except RuntimeError as err:
            last = err
            log = logfile.read_text(errors="replace") if logfile.exists() else ""
            if "could not bind" in log or "already in use" in log:
                continue
            raise RuntimeError(f"{err}\nserver log:\n{log}") from None
        return port
    raise RuntimeError(f"could not find a free port for PostgreSQL: {last}")


@dataclass
class PostgresServer:
    """A running test server: its SQLAlchemy ``url``, and a stop and start on the same port
    and data directory (a database that goes away and comes back)."""

    url: str
    port: int
    datadir: Path
    logfile: Path
    _run: _Runner

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: fast ends sessions cleanly, immediate as a crash would."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def start(self) -> None:
        """Start it again after :meth:`stop`, on the same port, with the same data."""
        _pg_ctl_start(self._run, self.datadir, self.logfile, self.port)


@contextlib.contextmanager
def start_postgres(database: str = "dlinfra") -> Iterator[str]:
    """Run a fresh PostgreSQL server for the duration of the block; yield a SQLAlchemy URL.

    Raises :class:`PostgresUnavailable` when the binaries (or the psycopg driver) are missing.
    """
    with run_postgres(database) as server:
        yield server.url


@contextlib.contextmanager
def run_postgres(database: str = "dlinfra") -> Iterator[PostgresServer]:
    """Like :func:`start_postgres`, yielding the server, which the block may stop and start."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, createdb) were not found via "
            "`pg_config --bindir` nor under /usr/lib/postgresql/*/bin; install PostgreSQL "
            f"(e.g. `apt-get install postgresql`) or set {SKIP_ENV}=1 to skip these tests"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable(
            f"the psycopg driver is not installed (pip install 'psycopg[binary]'); "
            f"or set {SKIP_ENV}=1 to skip these tests"
        ) from None

    workdir = Path(tempfile.mkdtemp(prefix="dlinfra-pg-"))
    datadir = workdir / "data"
    logfile = workdir / "server.log"
    started = False
    try:
        run = _Runner(bindir, workdir)
        run(
            "initdb",
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# throw-away test server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{workdir}'\n"
                "max_connections = 200\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )
        port = _start(run, datadir, logfile)
        started = True
        run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
        yield PostgresServer(
            url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}",
            port=port,
            datadir=datadir,
            logfile=logfile,
            _run=run,
        )
    finally:
        if started:
            try:
                # a block that stopped it and could not start it again: nothing to stop
                if (datadir / "postmaster.pid").exists():
                    run("pg_ctl", "-D", str(datadir), "-m", "fast", "-w", "-t", "60", "stop")
            except (RuntimeError, subprocess.SubprocessError):
                with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                    run("pg_ctl", "-D", str(datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)
