"""``jupyter dlinfra token``: what an admin runs to give people access to the team gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.store import Store


def run(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_dlinfra.cli", "token", "--db-url", db_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_issue_list_revoke(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/team.sqlite"
    issued = run(db, "issue", "alice", "--label", "laptop")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.splitlines()[0]
    assert "shown once, stored hashed" in issued.stdout
    book = TokenBook(Store(db), SystemClock())
    assert book.verify(token) == "alice"
    listed = run(db, "--json", "list")
    (row,) = json.loads(listed.stdout)
    assert row["user"] == "alice" and row["label"] == "laptop" and "token" not in row
    revoked = run(db, "revoke", row["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert book.verify(token) is None
    assert json.loads(run(db, "--json", "list").stdout) == []


def test_mistakes_are_said_plainly(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/team.sqlite"
    bad = run(db, "issue", "not a name")
    assert bad.returncode != 0 and "user name" in bad.stderr
    missing = run(db, "revoke", "deadbeef")
    assert missing.returncode != 0 and "no token" in missing.stderr
