"""Hot write statements run through the database driver, compiled once per dialect.

Executing even a built, cached SQLAlchemy Core statement costs some 45 microseconds of Python
(its execution context, the processing of each parameter, setting up a result), where the driver
itself takes 3 to 15: a change of the ledger executes a dozen statements, so that overhead was a
fifth of a change. A :class:`DriverStatement` is a Core statement compiled once per dialect to
its SQL text and the order of its parameters, then executed with
``Connection.exec_driver_sql``: in the connection's own transaction, with the engine's events
(the statement-count test and the pool's listeners still see every statement), but without the
per-execution processing.

That processing is only safe to skip for statements that bind plain values (numbers, strings,
booleans, None: what both drivers take as they are) and return nothing, or one plain number.
Statements with typed results (booleans on SQLite come back as 0 and 1), JSON or dates, or an
expanding IN list stay on the Core path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

__all__ = ["DriverStatement"]

#: where a parameter's value comes from: the caller's (by name), or fixed in the statement
_Source = tuple[bool, Any]


class DriverStatement:
    """``statement``, whose bound parameters are ``keys`` (and values fixed in the statement
    itself), executed with a mapping of ``keys`` (:meth:`run`) or a list of them
    (:meth:`run_many`)."""

    def __init__(
        self, statement: ClauseElement, keys: Sequence[str], *, returns_number: bool = False
    ) -> None:
        """``returns_number``: the statement returns one plain number (``RETURNING id``),
        read with ``run(...).scalar_one()``; it cannot be run with :meth:`run_many`."""
        self.statement = statement
        self.keys = tuple(keys)
        self.returns_number = returns_number
        #: (database, driver, parameter style) -> (SQL text, each positional parameter's source
        #: (None: by name), values the statement fixes); two threads may compile it twice
        self._compiled: dict[
            tuple[str, str, str], tuple[str, tuple[_Source, ...] | None, dict[str, Any]]
        ] = {}

    def __repr__(self) -> str:
        return f"DriverStatement({self.statement})"

    def run(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Execute once with ``params``."""
        text, order, fixed = self._for(conn.dialect)
        return conn.exec_driver_sql(text, self._values(params, order, fixed))

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per row (the driver's executemany); nothing when there is none."""
        if self.returns_number:
            raise ValueError(f"{self!r} returns a row per execution: run it once per row")
        if rows:
            text, order, fixed = self._for(conn.dialect)
            conn.exec_driver_sql(text, [self._values(row, order, fixed) for row in rows])

    @staticmethod
    def _values(
        row: Mapping[str, Any], order: tuple[_Source, ...] | None, fixed: dict[str, Any]
    ) -> Any:
        if order is None:
            return {**fixed, **row} if fixed else dict(row)
        return tuple(row[value] if by_name else value for by_name, value in order)

    def _for(self, dialect: Dialect) -> tuple[str, tuple[_Source, ...] | None, dict[str, Any]]:
        # the text depends on the driver's parameter style, not only on the database
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> tuple[str, tuple[_Source, ...] | None, dict[str, Any]]:
        compiled = self.statement.compile(
            dialect=dialect,
            column_keys=list(self.keys),
            # as for executemany: an INSERT on PostgreSQL would otherwise return its new key
            for_executemany=not self.returns_number,
            compile_kwargs={"render_postcompile": True},
        )
        assert isinstance(compiled, SQLCompiler), compiled
        returning = compiled.effective_returning
        if returning and not (self.returns_number and len(returning) == 1):
            raise ValueError(f"{self!r} returns rows: run it through SQLAlchemy")
        # every parameter the text binds: the caller's keys, or a value the statement fixes
        defaults = compiled.construct_params({key: None for key in self.keys}, _check=False)
        fixed = {name: value for name, value in defaults.items() if name not in self.keys}
        missing = set(self.keys) - set(defaults)
        if missing:
            raise ValueError(f"{self!r} binds no parameter {sorted(missing)}")
        prefetched = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if prefetched:
            # a column default SQLAlchemy works out at each execution: it would be bound as None
            raise ValueError(f"{self!r}: columns with Python-side defaults: {prefetched}")
        escaped = compiled.escaped_bind_names
        if escaped:
            raise ValueError(f"{self!r}: parameter names that the dialect escapes: {escaped}")
        text = str(compiled)
        positions = compiled.positiontup
        if positions is None:
            return text, None, fixed
        order = tuple(
            (True, name) if name in self.keys else (False, fixed[name]) for name in positions
        )
        return text, order, {}
