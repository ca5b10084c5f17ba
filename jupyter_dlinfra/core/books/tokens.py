"""People's API tokens for a team gateway: issued by an admin, shown once, stored hashed.

A person's Jupyter server presents its token to the gateway (``GatewayClient.auth_token``); the
gateway knows the person by it. Tokens are 256 random bits, so one SHA-256 is enough to keep a
stolen ledger from giving them away (a slow password hash guards guessable secrets, not these).

A gateway checks a token on every request. On PostgreSQL with the store's change feed started
(``Store.start_feed``), the person a token names is kept in memory until any other process
commits a change (a revocation from the command line among them) or this one revokes a token:
a request then costs no database round trip for its token (``cached``). Elsewhere every check
reads the token's row.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from jupyter_dlinfra.core.change_feed import FeedCache
from jupyter_dlinfra.core.clock import Clock
from jupyter_dlinfra.core.errors import InvalidRequest, NotFound
from jupyter_dlinfra.core.store import Store, user_tokens

__all__ = ["TOKEN_PREFIX", "IssuedToken", "TokenBook", "TokenRecord", "hash_secret"]

#: issued tokens start with this, so that a leaked one is recognisable (and grep-able in logs)
TOKEN_PREFIX = "dlt_"
_USER_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,255}$")


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class TokenRecord:
    #: the first 12 hex digits of the hash: names a token in lists and revocations
    id: str
    user: str
    label: str
    created_at: float
    created_by: str
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, kw_only=True)
class IssuedToken:
    #: the secret itself: shown to the admin once, never stored
    token: str
    record: TokenRecord


class TokenBook:
    """Issue, verify, list and revoke people's tokens in the ledger's store."""

    #: a token's last use is written at most this often (seconds): verifying stays a read
    TOUCH_EVERY = 300.0

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        #: token hash -> (user, when its last use was written); only live tokens
        self._live: FeedCache[str, tuple[str, float]] = FeedCache(lambda: store.feed)

    def cached(self, token: str) -> str | None:
        """The user a live token belongs to, when that is known without the database (and its
        last use need not be written now); None: ask :meth:`verify`."""
        found = self._live.get(hash_secret(token))
        if found is None or self.clock.now() - found[1] >= self.TOUCH_EVERY:
            return None
        return found[0]

    def issue(self, user: str, *, label: str = "", by: str) -> IssuedToken:
        if not isinstance(user, str) or not _USER_NAME.match(user):
            raise InvalidRequest(
                f"user name {user!r} is not valid: use 1-255 letters, digits and _.@+-"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = hash_secret(token)
        now = self.clock.now()
        with self.store.write() as tx:
            tx.conn.execute(
                insert(user_tokens).values(
                    token_hash=digest,
                    user=user,
                    label=label[:255],
                    created_at=now,
                    created_by=by,
                )
            )
            tx.touch()
        return IssuedToken(token=token, record=self._find(digest))

    def verify(self, token: str) -> str | None:
        """The user a live token belongs to, None for an unknown or revoked one."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = hash_secret(token)
        stamp = self._live.stamp()
        with self.store.read() as conn:
            row = conn.execute(
                select(
                    user_tokens.c.user, user_tokens.c.revoked_at, user_tokens.c.last_used_at
                ).where(user_tokens.c.token_hash == digest)
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        now = self.clock.now()
        used = row.last_used_at
        if used is None or now - used >= self.TOUCH_EVERY:
            # the row's last use, not the rest of the ledger: no version to move, no
            # notification to clear other processes' caches
            with self.store.write() as tx:
                tx.conn.execute(
                    update(user_tokens)
                    .where(user_tokens.c.token_hash == digest)
                    .values(last_used_at=now)
                )
            used = now
        self._live.put(digest, (str(row.user), float(used)), stamp)
        return str(row.user)

    def tokens(
        self, user: str | None = None, *, include_revoked: bool = False
    ) -> list[TokenRecord]:
        query = select(user_tokens).order_by(user_tokens.c.created_at)
        if user is not None:
            query = query.where(user_tokens.c.user == user)
        if not include_revoked:
            query = query.where(user_tokens.c.revoked_at.is_(None))
        with self.store.read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke by the id shown in lists (a prefix of the hash, at least 8 digits)."""
        if not re.fullmatch(r"[0-9a-f]{8,64}", token_id or ""):
            raise InvalidRequest(
                f"token id {token_id!r} is not valid: give the id from `jupyter dlinfra token "
                "list` (8 or more hex digits)"
            )
        with self.store.write() as tx:
            found = (
                tx.conn.execute(
                    select(user_tokens.c.token_hash).where(
                        user_tokens.c.token_hash.startswith(token_id)
                    )
                )
                .scalars()
                .all()
            )
            if not found:
                raise NotFound(f"no token with id {token_id}")
            if len(found) > 1:
                raise InvalidRequest(f"token id {token_id} is ambiguous: give more digits")
            tx.conn.execute(
                update(user_tokens)
                .where(user_tokens.c.token_hash == found[0], user_tokens.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            tx.touch()
        # other processes learn of it from the commit's notification
        self._live.clear()
        return self._find(found[0])

    def _find(self, digest: str) -> TokenRecord:
        with self.store.read() as conn:
            row = conn.execute(select(user_tokens).where(user_tokens.c.token_hash == digest)).one()
        return _record(row)


def _record(row: object) -> TokenRecord:
    r = row._mapping  # type: ignore[attr-defined]
    return TokenRecord(
        id=str(r["token_hash"])[:12],
        user=str(r["user"]),
        label=str(r["label"]),
        created_at=float(r["created_at"]),
        created_by=str(r["created_by"]),
        last_used_at=r["last_used_at"],
        revoked_at=r["revoked_at"],
    )
