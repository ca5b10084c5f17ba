"""Options of the GPU ledger and of who this server is in it."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from traitlets import Bool, Float, HasTraits, Unicode, default

__all__ = ["LedgerOptions", "default_db_url"]


def default_db_url() -> str:
    """``DLINFRA_DB_URL``, else a SQLite file in the Jupyter data dir (made if missing)."""
    if os.environ.get("DLINFRA_DB_URL"):
        return os.environ["DLINFRA_DB_URL"]
    path = Path(jupyter_data_dir()) / "dlinfra" / "ledger.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class LedgerOptions(HasTraits):
    gateway = Bool(
        False,
        config=True,
        help="Run as the team gateway (`jupyter dlinfra gateway` sets it): callers are told "
        "apart by their tokens, each acts on their own kernels and jobs, admins on all. Off: a "
        "personal server, whose every caller is user_name. A server started with "
        "--gateway-url forwards /dlinfra to its gateway whatever this says.",
    )
    db_url = Unicode(
        "",
        config=True,
        help="SQLAlchemy URL of the GPU ledger, e.g. postgresql+psycopg://host/dlinfra. Empty: "
        "SQLite (WAL mode) at <jupyter data dir>/dlinfra/ledger.sqlite, shared by every server "
        "of this user on this node. Servers that should share one ledger must use the same URL. "
        "Environment: DLINFRA_DB_URL.",
    )
    freeze_gc = Bool(
        True,
        config=True,
        help="Once the ledger's state is first loaded, freeze the server's objects out of "
        "Python's cyclic garbage collector (gc.freeze), and raise its thresholds to 50,000 / "
        "20 / 100: a full collection no longer scans the state, which at 1,024 nodes and "
        "10,000 waiting requests paused whichever request was running for 100-180 ms, and "
        "objects that live a little while under load are freed before a collection looks. "
        "Off: Python's defaults.",
    )
    change_feed = Bool(
        True,
        config=True,
        help="On PostgreSQL, listen for other processes' commits (LISTEN/NOTIFY, a connection of "
        "its own) and keep people's and kernels' tokens, GPU rows and the scheduling state in "
        "memory until one comes: a request then costs no database round trip to check its "
        "token or the ledger's version. A token revoked with `jupyter dlinfra token revoke` "
        "stops working once its commit is told (milliseconds). Turn it off where the database "
        "is reached through a pooler in transaction mode (PgBouncer's pool_mode=transaction), "
        "which does not deliver notifications: every request then reads them again.",
    )
    node_name = Unicode(
        config=True,
        help="Name of this node in the ledger. Default: the host name. Kernels get GPUs of their "
        "own node only.",
    )
    user_name = Unicode(
        config=True,
        help="Name recorded in the ledger for the kernels and requests of this server. Default: "
        "$JUPYTERHUB_USER, else the login name of the server process.",
    )
    api_url = Unicode(
        "",
        config=True,
        help="URL at which kernels reach this server's /dlinfra/api. Empty: derived from the "
        "server's ip, port and base_url (wildcard addresses become 127.0.0.1).",
    )
    reconcile_interval = Float(
        30.0,
        config=True,
        help="Seconds between two checks that the ledger's kernels on this node still run; GPUs "
        "of vanished kernels are released. 0 disables the periodic check (it still runs at "
        "start-up).",
    )
    watch_interval = Float(
        0.2,
        config=True,
        help="Seconds between two looks at the ledger for changes made by other server "
        "processes (waiting requests notice grants this fast). 0 disables it.",
    )

    @default("node_name")
    def _default_node_name(self) -> str:
        return socket.gethostname()

    @default("user_name")
    def _default_user_name(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @default("db_url")
    def _default_db_url(self) -> str:
        return default_db_url()
