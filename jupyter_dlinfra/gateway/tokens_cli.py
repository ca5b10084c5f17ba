"""``jupyter dlinfra token issue|list|revoke``: people's gateway tokens, run by an admin.

It works on the gateway's ledger directly (``--db-url``, else ``DLINFRA_DB_URL``, else the
default SQLite file), so it needs the same database access as the gateway, and nothing else.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from typing import Any

from jupyter_dlinfra.core.books.tokens import TokenBook, TokenRecord
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.errors import LedgerError
from jupyter_dlinfra.core.store import Store

__all__ = ["add_parser"]


def _book(args: argparse.Namespace) -> TokenBook:
    from jupyter_dlinfra.server.config.ledger import default_db_url

    return TokenBook(Store(args.db_url or default_db_url()), SystemClock())


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _row(record: TokenRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "user": record.user,
        "label": record.label,
        "created_at": record.created_at,
        "created_by": record.created_by,
        "last_used_at": record.last_used_at,
        "revoked_at": record.revoked_at,
    }


def cmd_issue(args: argparse.Namespace) -> int:
    issued = _book(args).issue(args.user, label=args.label or "", by=getpass.getuser())
    if args.json:
        print(json.dumps({"token": issued.token, **_row(issued.record)}))
    else:
        print(issued.token)
        print(
            f"# token {issued.record.id} for {issued.record.user}: shown once, stored hashed. "
            "Give it to the person's Jupyter server as --GatewayClient.auth_token "
            "(or JUPYTER_GATEWAY_AUTH_TOKEN).",
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    records = _book(args).tokens(args.user, include_revoked=args.all)
    if args.json:
        print(json.dumps([_row(r) for r in records]))
        return 0
    for r in records:
        state = (
            f"revoked {_when(r.revoked_at)}" if r.revoked_at else f"used {_when(r.last_used_at)}"
        )
        print(f"{r.id}  {r.user:<20} {_when(r.created_at)}  {state}  {r.label}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    record = _book(args).revoke(args.id)
    print(f"token {record.id} of {record.user} revoked")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.token_run(args))
    except LedgerError as err:
        raise SystemExit(f"jupyter dlinfra token: {err}") from None


def add_parser(sub: Any) -> None:
    t = sub.add_parser("token", help="issue, list and revoke people's gateway tokens (admins)")
    t.add_argument("--db-url", help="the gateway's ledger (default: DLINFRA_DB_URL, else local)")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    actions = t.add_subparsers(dest="token_command", required=True)
    i = actions.add_parser("issue", help="a new token for a person (printed once)")
    i.add_argument("user")
    i.add_argument("--label", help="a note, e.g. the machine it is for")
    i.set_defaults(token_run=cmd_issue)
    ls = actions.add_parser("list", help="live tokens (with --all, revoked ones too)")
    ls.add_argument("--user")
    ls.add_argument("--all", action="store_true")
    ls.set_defaults(token_run=cmd_list)
    r = actions.add_parser("revoke", help="stop a token from working")
    r.add_argument("id", help="the id shown by list")
    r.set_defaults(token_run=cmd_revoke)
    t.set_defaults(run=run)
