"""Persistence: the ledger's tables and transactions, on SQLite (WAL) or any SQLAlchemy database.

Every write goes through :meth:`Store.write`, which takes the database-wide write lock first
(``BEGIN IMMEDIATE`` on SQLite, a row lock on PostgreSQL and others), so scheduling decisions
made by several server processes sharing one database are serialised. The primary key of
``holdings`` is a second line of defence: a GPU has one holder row at most, whatever the isolation
level.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from jupyter_dlinfra.core.change_feed import CHANNEL, ChangeFeed
from jupyter_dlinfra.core.driver_sql import DriverStatement
from jupyter_dlinfra.core.wal_checkpoints import BACKSTOP_PAGES, WalCheckpointer

__all__ = ["LEDGER_VERSION", "SCHEMA_VERSION", "Store", "Transaction", "read_counter"]

SCHEMA_VERSION = 14

#: how long opening a connection to a database server may take before the call fails (seconds)
CONNECT_TIMEOUT_S = 10

metadata = MetaData()

meta = Table(
    "dlinfra_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

gpus = Table(
    "dlinfra_gpus",
    metadata,
    Column("uuid", String(128), primary_key=True),
    Column("node", String(255), nullable=False, index=True),
    Column("idx", Integer, nullable=False),
    Column("model", String(255), nullable=False),
    Column("memory_bytes", BigInteger, nullable=False),
    Column("simulated", Boolean, nullable=False, default=False),
    Column("present", Boolean, nullable=False, default=True),
)

kernels = Table(
    "dlinfra_kernels",
    metadata,
    Column("kernel_id", String(64), primary_key=True),
    Column("user", String(255), nullable=False),
    Column("node", String(255), nullable=False, index=True),
    Column("server_id", String(64), nullable=False),
    Column("kernel_name", String(255), nullable=False, default=""),
    Column("path", Text, nullable=True),
    Column("pid", Integer, nullable=True),
    Column("pid_started_at", Float, nullable=True),
    Column("keep_on_restart", Boolean, nullable=False, default=False),
    Column("token_hash", String(64), nullable=True, unique=True),
    Column("created_at", Float, nullable=False),
    # schema 6: when its current process was asked for (a restart registers the kernel again)
    Column("launched_at", Float, nullable=True),
)

allocations = Table(
    "dlinfra_allocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kernel_id", String(64), nullable=False, index=True),
    Column("user", String(255), nullable=False),
    Column("node", String(255), nullable=False),
    Column("count", Integer, nullable=False),
    Column("model", String(255), nullable=True),
    Column("state", String(16), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("granted_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("end_reason", Text, nullable=True),
    # schema 4: scheduling terms (NULL on rows written before: the policy's defaults apply)
    Column("priority_class", String(64), nullable=True),
    Column("kind", String(16), nullable=True),
    Column("groups", Text, nullable=True),
    Column("borrowed", Boolean, nullable=True),
    Column("preempted_for", Integer, nullable=True),
    Column("preempt_reason", Text, nullable=True),
    # schema 5: "cluster" when a cluster's scheduler places it (Kubernetes), and why it waits
    Column("placement", String(16), nullable=True),
    Column("cluster_reason", Text, nullable=True),
    # schema 10: nodes a request of the pool is not granted on (JSON list), after hand-backs
    Column("avoid_nodes", Text, nullable=True),
    # schema 13: a gang in whole nodes (a distributed job): its GPUs per node, ``count`` of them
    # over ``count / per_node`` different nodes; NULL: one node
    Column("per_node", Integer, nullable=True),
    # schema 14: a kernel's grant parked (its GPU memory checkpointed to the host, its GPUs lent):
    # "parking", "parked", "resuming" (waiting for the loans to end), "restoring" (its GPUs
    # are back, its process is being restored); NULL: not parked. With when, why, and how many
    # bytes of GPU memory the host keeps for it; and grants made on a parked grant's GPUs
    Column("park_state", String(16), nullable=True),
    Column("parked_at", Float, nullable=True),
    Column("park_reason", Text, nullable=True),
    Column("park_bytes", BigInteger, nullable=True),
    Column("on_loan", Boolean, nullable=True),
)
# schema 7: one user's (or node's) allocations are read without scanning everyone's
Index("ix_dlinfra_allocations_user_state", allocations.c.user, allocations.c.state)
Index("ix_dlinfra_allocations_node_state", allocations.c.node, allocations.c.state)
# schema 14: the few parked grants are read without the others (the cluster view shows them)
Index("ix_dlinfra_allocations_park_state", allocations.c.park_state)
# a server's loops read its own kernels
Index("ix_dlinfra_kernels_server", kernels.c.server_id)

allocation_gpus = Table(
    "dlinfra_allocation_gpus",
    metadata,
    Column("allocation_id", Integer, ForeignKey("dlinfra_allocations.id"), primary_key=True),
    Column("gpu_uuid", String(128), primary_key=True),
)

holdings = Table(
    "dlinfra_holdings",
    metadata,
    Column("gpu_uuid", String(128), ForeignKey("dlinfra_gpus.uuid"), primary_key=True),
    Column("allocation_id", Integer, ForeignKey("dlinfra_allocations.id"), nullable=False),
)
# the event stream reads the holdings of the allocations a change touched, not every holding
Index("ix_dlinfra_holdings_allocation", holdings.c.allocation_id)

events = Table(
    "dlinfra_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("allocation_id", Integer, nullable=True),
    Column("kernel_id", String(64), nullable=True),
    Column("detail", Text, nullable=False, default="{}"),
)

#: the idle-reclaim state of each kernel that holds GPUs (core/idle.py)
idle_states = Table(
    "dlinfra_idle",
    metadata,
    Column("kernel_id", String(64), primary_key=True),
    Column("phase", String(16), nullable=False),
    Column("idle_since", Float, nullable=True),
    Column("warned_at", Float, nullable=True),
    Column("keeps", Integer, nullable=False, default=0),
    Column("hold_until", Float, nullable=True),
    Column("reclaimed_at", Float, nullable=True),
    Column("last_util", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    #: said to the kernel at its next launch (after a reclaim restarted it), then cleared
    Column("message", Text, nullable=True),
)

#: the reclaim policy set through the API (one row, key "reclaim"); absent: the config's
policies = Table(
    "dlinfra_policy",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("document", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(255), nullable=False),
)

#: one row per changed policy value: who, when, old and new
policy_changes = Table(
    "dlinfra_policy_changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("who", String(255), nullable=False),
    Column("field", String(255), nullable=False),
    Column("old", Text, nullable=True),
    Column("new", Text, nullable=True),
)

#: kernels' GPU use, downsampled to one row per kernel per bucket, for policy dry runs
usage = Table(
    "dlinfra_usage",
    metadata,
    Column("kernel_id", String(64), primary_key=True),
    Column("bucket", Float, primary_key=True),
    Column("user", String(255), nullable=False),
    Column("path", Text, nullable=True),
    Column("gpus", Integer, nullable=False),
    Column("util_mean", Float, nullable=False),
    Column("util_max", Float, nullable=False),
    Column("memory_bytes", BigInteger, nullable=False),
    Column("samples", Integer, nullable=False),
)

#: what allocations held and used, one row per allocation per clock hour (UTC) it held GPUs in:
#: the usage reports' history, kept far longer than ``usage`` (see core/books/usage_hours.py)
usage_hours = Table(
    "dlinfra_usage_hours",
    metadata,
    # hours since the epoch (an integer, so that a report's steps are integer divisions)
    Column("hour", Integer, primary_key=True),
    Column("allocation_id", Integer, primary_key=True),
    Column("user", String(255), nullable=False),
    Column("groups", Text, nullable=False, default="[]"),
    Column("priority_class", String(64), nullable=False),
    Column("model", String(255), nullable=False),
    Column("node", String(255), nullable=False),
    # GPU-seconds within the hour: held; with utilisation samples; utilisation-weighted; held
    # in samples under the idle threshold
    Column("held_s", Float, nullable=False),
    Column("observed_s", Float, nullable=False),
    Column("busy_s", Float, nullable=False),
    Column("idle_s", Float, nullable=False),
)
Index("ix_dlinfra_usage_hours_user", usage_hours.c.user, usage_hours.c.hour)

#: batch jobs made from notebooks (core/books/jobs.py), whatever backend runs them
jobs = Table(
    "dlinfra_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(255), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("path", Text, nullable=False),
    Column("backend", String(64), nullable=False),
    Column("node", String(255), nullable=False),
    Column("server_id", String(64), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("model", String(255), nullable=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("parameters", Text, nullable=False, default="{}"),
    Column("group_id", String(64), nullable=True, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=True),
    Column("workdir", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("ended_at", Float, nullable=True),
    Column("allocation_id", Integer, nullable=True),
    Column("handle", Text, nullable=True),
    Column("failed_cell", Integer, nullable=True),
    Column("error", Text, nullable=True),
    # schema 4
    Column("priority_class", String(64), nullable=True),
    Column("attempts", Integer, nullable=True),
    # schema 9: where a queued job stands in its backend's queue (SLURM's, or the ledger's)
    Column("queue_position", Integer, nullable=True),
    Column("queue_length", Integer, nullable=True),
    Column("estimated_start", Float, nullable=True),
    # schema 12: a distributed job's nodes (its GPUs are nodes x gpus / nodes, a rank per GPU);
    # NULL: one process with all its GPUs
    Column("nodes", Integer, nullable=True),
    # schema 12: a job with roles: its roles as JSON (jobs/shape.py's Role.to_json); NULL: none
    Column("roles", Text, nullable=True),
)

#: GPUs of a node used by work the ledger did not admit (a cluster's pods that are not ours):
#: ``pods`` names them (a JSON list of "namespace/name"); schema 10
outside_use = Table(
    "dlinfra_outside",
    metadata,
    Column("node", String(255), primary_key=True),
    Column("gpus", Integer, nullable=False),
    Column("pods", Text, nullable=False),
    Column("at", Float, nullable=False),
)

#: fair share: each user's decayed GPU-seconds of ended allocations, as of ``at``
fairshare = Table(
    "dlinfra_fairshare",
    metadata,
    Column("user", String(255), primary_key=True),
    Column("gpu_seconds", Float, nullable=False),
    Column("at", Float, nullable=False),
)

#: columns added after a table was first created: (schema version, table, column)
_ADDED = (
    *(
        (4, "dlinfra_allocations", c)
        for c in ("priority_class", "kind", "groups", "borrowed", "preempted_for", "preempt_reason")
    ),
    (4, "dlinfra_jobs", "priority_class"),
    (4, "dlinfra_jobs", "attempts"),
    (5, "dlinfra_allocations", "placement"),
    (5, "dlinfra_allocations", "cluster_reason"),
    (6, "dlinfra_kernels", "launched_at"),
    *((9, "dlinfra_jobs", c) for c in ("queue_position", "queue_length", "estimated_start")),
    (10, "dlinfra_allocations", "avoid_nodes"),
    (12, "dlinfra_jobs", "nodes"),
    (12, "dlinfra_jobs", "roles"),
    (13, "dlinfra_allocations", "per_node"),
    *(
        (14, "dlinfra_allocations", c)
        for c in ("park_state", "parked_at", "park_reason", "park_bytes", "on_loan")
    ),
)

#: the Jupyter servers using the ledger: jobs of a server that is gone are adopted by another
servers = Table(
    "dlinfra_servers",
    metadata,
    Column("server_id", String(64), primary_key=True),
    Column("node", String(255), nullable=False),
    Column("user", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_started_at", Float, nullable=True),
    Column("started_at", Float, nullable=False),
)

#: job -> the jobs that must succeed before it runs
job_deps = Table(
    "dlinfra_job_deps",
    metadata,
    Column("job_id", Integer, ForeignKey("dlinfra_jobs.id"), primary_key=True),
    Column("after_id", Integer, ForeignKey("dlinfra_jobs.id"), primary_key=True),
)

#: people's API tokens for a team gateway, issued by an admin; only their SHA-256 is kept
user_tokens = Table(
    "dlinfra_user_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user", String(255), nullable=False, index=True),
    Column("label", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)

_WRITE = "dlinfra_write"


#: the meta key of the counter of changes to the GPU ledger's scheduling state (GPUs,
#: allocations, holdings, fair share, the scheduling policy), apart from ``version`` (every
#: change): the ledger's in-memory scheduler reloads only when another process moved it
LEDGER_VERSION = "ledger"


class Transaction:
    """An open write transaction; ``touch()`` marks that it changed the ledger."""

    def __init__(self, conn: Connection, counters: dict[str, int] | None = None) -> None:
        self.conn = conn
        #: the meta counters as the transaction began, where taking the write lock read them
        #: (PostgreSQL), so that they cost no other round trip
        self.counters = counters or {}
        self.changed = False
        #: the change is one of the GPU ledger's scheduling state (LEDGER_VERSION counts it)
        self.ledger_changed = False
        self.committed: list[Callable[[], None]] = []

    def touch(self) -> None:
        self.changed = True

    def on_commit(self, call: Callable[[], None]) -> None:
        """Call ``call`` once the transaction has committed (not if it fails)."""
        self.committed.append(call)


class Store:
    """Owns the engine; hands out read and write transactions."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            engine_kwargs.setdefault("connect_args", {}).update(
                {"timeout": 60, "check_same_thread": False}
            )
        else:
            # a database server that restarted has closed every pooled connection; a checkout
            # asks it first (one round trip) and reconnects, but only for a connection that
            # rested a while (_ping_rested): on a busy server every call made one more trip
            engine_kwargs.setdefault("pool_pre_ping", False)
            if (
                self.url.get_backend_name() == "postgresql"
                and "connect_timeout" not in self.url.query
            ):
                # an unreachable host must fail a call in seconds, not block a pool thread for
                # the minutes of TCP's own timeout
                engine_kwargs.setdefault("connect_args", {}).setdefault(
                    "connect_timeout", CONNECT_TIMEOUT_S
                )
        self.engine: Engine = create_engine(self.url, **engine_kwargs)
        self._checkpointer: WalCheckpointer | None = None
        #: this Store's id in the change feed's notifications (its own are not news to it)
        self.writer = uuid.uuid4().hex[:16]
        #: other processes' commits, where the database tells them (start_feed)
        self.feed: ChangeFeed | None = None
        self._notifies = self.url.get_backend_name() == "postgresql"
        if self.is_sqlite:
            self._configure_sqlite(self.engine)
            self._reader = self.engine
        else:
            if not engine_kwargs["pool_pre_ping"]:
                _ping_rested(self.engine)
            # READ COMMITTED gives each statement its own snapshot whether or not a transaction
            # holds them, so a read needs no BEGIN and COMMIT: two round trips fewer per call
            self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._create_schema()
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            self._checkpointer = WalCheckpointer(self.engine)
            self._checkpointer.start()

    @staticmethod
    def _configure_sqlite(engine: Engine) -> None:
        # pysqlite's own transaction handling defers BEGIN and cannot take the write lock up
        # front; we switch it off and issue BEGIN ourselves (SQLAlchemy's documented recipe).
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout = 60000")
            if engine.url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode = WAL")
                # In WAL mode, NORMAL writes each commit to the log before the commit returns
                # and syncs it at checkpoints: a crash of any process loses nothing committed
                # (no grant told to a user is lost); only a power cut or an OS crash may lose
                # the last commits, and never corrupts the file. FULL would sync every commit,
                # several times the cost of a grant, for that case alone.
                cur.execute("PRAGMA synchronous = NORMAL")
                # checkpoints are a thread's business (wal_checkpoints.py); a commit makes one
                # only if that thread falls far behind
                cur.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def _create_schema(self) -> None:
        with self.engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
            if self.url.get_backend_name() == "postgresql":
                # concurrent first starts must not race on CREATE TABLE
                conn.execute(text("SELECT pg_advisory_xact_lock(421337)"))
            metadata.create_all(conn)
            self._add_columns(conn)
            existing = set(conn.execute(select(meta.c.key)).scalars())
            for key, value in (("schema", SCHEMA_VERSION), ("version", 0), (LEDGER_VERSION, 0)):
                if key not in existing:
                    conn.execute(meta.insert().values(key=key, value=value))
            # versions 2 and 3 only added tables, which create_all has just made on older
            # ledgers; 4, 5 and 6 added columns too (_add_columns); 7 added indexes, which
            # create_all makes only with their table, and so did 8; 9 and 10 added columns; 11 a
            # table; 12 two columns; 14 columns and an index
            for index in (*allocations.indexes, *kernels.indexes, *holdings.indexes):
                index.create(conn, checkfirst=True)
            conn.execute(
                update(meta)
                .where(meta.c.key == "schema", meta.c.value < SCHEMA_VERSION)
                .values(value=SCHEMA_VERSION)
            )

    @staticmethod
    def _add_columns(conn: Connection) -> None:
        """ALTER older ledgers' tables: create_all makes missing tables, never missing columns."""
        inspector = inspect(conn)
        have: dict[str, set[str]] = {}
        for _version, table, column in _ADDED:
            if table not in have:
                have[table] = {c["name"] for c in inspector.get_columns(table)}
            if column in have[table]:
                continue
            col = metadata.tables[table].c[column]
            kind = col.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table} ADD COLUMN "{column}" {kind}'))
            have[table].add(column)

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A transaction that holds the ledger's write lock from its first statement."""
        tx = self._write()
        with tx as opened:
            yield opened
        for call in opened.committed:
            call()

    @contextmanager
    def _write(self) -> Iterator[Transaction]:
        with self.engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
            counters = None
            if not self.is_sqlite:
                counters = {r.key: int(r.value) for r in _LOCK.run(conn, {})}
            tx = Transaction(conn, counters)
            yield tx
            if tx.changed:
                if self._notifies:
                    # the bump and the notification of it in one round trip
                    conn.exec_driver_sql(
                        _BUMP_BOTH_NOTIFY if tx.ledger_changed else _BUMP_NOTIFY,
                        {"writer": self.writer},
                    )
                else:
                    (_BUMP_BOTH if tx.ledger_changed else _BUMP).run(conn, {})

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection to read with (on a server database, each statement sees the latest
        committed state: write with :meth:`write`)."""
        with self._reader.connect() as conn, conn.begin():
            yield conn

    def version(self) -> int:
        """A counter that grows with every change: cheap to poll from other processes."""
        with self.read() as conn:
            return read_counter(conn, "version")

    def start_feed(self) -> ChangeFeed | None:
        """Listen for other processes' commits (PostgreSQL with psycopg 3; None elsewhere).
        Started once; stopped by :meth:`dispose`."""
        if self.feed is None and self._notifies and self.engine.dialect.driver == "psycopg":
            import psycopg

            args, kwargs = self.engine.dialect.create_connect_args(self.url)

            def connect() -> Any:
                return psycopg.connect(*args, **kwargs)

            self.feed = ChangeFeed(connect, self.writer).start()
        return self.feed

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self.feed is not None:
            self.feed.stop()
        self.engine.dispose()


#: seconds a pooled connection may rest before a checkout asks the server whether it still
#: stands (a restart of the database server closes every connection)
PING_AFTER_S = 1.0


def _ping_rested(engine: Engine) -> None:
    """Ping a connection at checkout only when it rested PING_AFTER_S or more since its last
    use. One used moments ago that a restart closed fails its call (the caller sees the ledger
    unavailable, as for any outage) and SQLAlchemy drops every pooled connection with it."""

    @event.listens_for(engine.pool, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        rested_since = record.info.get("checked_in_at")
        if rested_since is not None and time.monotonic() - rested_since < PING_AFTER_S:
            return
        try:
            ok = engine.dialect.do_ping(dbapi_conn)
        except Exception as err:
            # the pool throws this connection away and takes another (SQLAlchemy's contract)
            raise sa_exc.DisconnectionError(str(err)) from err
        if ok is False:
            raise sa_exc.DisconnectionError("the database server closed the connection")


def read_counter(conn: Connection, key: str) -> int:
    """One of the meta counters (``version`` or LEDGER_VERSION); 0 before it was first set."""
    found = _COUNTER.run(conn, {"p_key": key}).scalar()
    return 0 if found is None else int(found)


# built once: a write and a read execute them every time, through the driver (driver_sql.py:
# they bind and return plain values)
_COUNTER = DriverStatement(select(meta.c.value).where(meta.c.key == bindparam("p_key")), ["p_key"])
#: PostgreSQL: the ledger's write lock, a row lock on the version counter; the ledger's counter
#: is locked and read with it (a row locked after a wait is read as the writer before left it,
#: where a subquery would read it as of the statement's start), in one order for every writer,
#: or two would each hold one row and wait for the other's
_LOCK = DriverStatement(
    select(meta.c.key, meta.c.value)
    .where(meta.c.key.in_(("version", LEDGER_VERSION)))
    .order_by(meta.c.key)
    .with_for_update(),
    [],
)
_BUMP = DriverStatement(
    update(meta).where(meta.c.key == "version").values(value=meta.c.value + 1), []
)
_BUMP_BOTH = DriverStatement(
    update(meta).where(meta.c.key.in_(("version", LEDGER_VERSION))).values(value=meta.c.value + 1),
    [],
)


def _bump_notify(keys: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{k}'" for k in keys)
    return (
        f"WITH bumped AS (UPDATE {meta.name} SET value = value + 1 WHERE key IN ({listed}) "
        "RETURNING key, value) "
        f"SELECT pg_notify('{CHANNEL}', %(writer)s || ' ' || "
        "string_agg(key || '=' || value::text, ',' ORDER BY key)) FROM bumped"
    )


#: PostgreSQL: _BUMP and _BUMP_BOTH, notifying the change feed's listeners of the new values
_BUMP_NOTIFY = _bump_notify(("version",))
_BUMP_BOTH_NOTIFY = _bump_notify(("version", LEDGER_VERSION))
