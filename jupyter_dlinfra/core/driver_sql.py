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
    itself), executed with a mapping or a list of mappings (executemany) of ``keys``."""

    def __init__(self, statement: ClauseElement, keys: Sequence[str]) -> None:
        self.statement = statement
        self.keys = tuple(keys)
        #: dialect name -> (SQL text, each positional parameter's source; None: by name)
        self._compiled: dict[str, tuple[str, tuple[_Source, ...] | None, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"DriverStatement({self.statement})"

    def run(
        self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> CursorResult[Any]:
        text, order, fixed = self._for(conn.dialect)
        many = not isinstance(params, Mapping)
        rows: Sequence[Mapping[str, Any]] = params if many else [params]  # type: ignore[list-item,assignment]
        if order is None:
            values: list[Any] = [{**fixed, **row} if fixed else dict(row) for row in rows]
        else:
            values = [
                tuple(row[value] if by_name else value for by_name, value in order) for row in rows
            ]
        return conn.exec_driver_sql(text, values if many else values[0])

    def _for(self, dialect: Dialect) -> tuple[str, tuple[_Source, ...] | None, dict[str, Any]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            found = self._compiled[dialect.name] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> tuple[str, tuple[_Source, ...] | None, dict[str, Any]]:
        compiled = self.statement.compile(
            dialect=dialect,
            column_keys=list(self.keys),
            compile_kwargs={"render_postcompile": True},
        )
        assert isinstance(compiled, SQLCompiler), compiled
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
