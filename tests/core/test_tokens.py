"""People's gateway tokens: issued once, stored hashed, verified, listed and revoked."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from jupyter_dlinfra.core.books.tokens import TOKEN_PREFIX, TokenBook, hash_secret
from jupyter_dlinfra.core.errors import InvalidRequest, NotFound
from jupyter_dlinfra.core.store import user_tokens

from .kit import Kit


@pytest.fixture
def book(kit: Kit) -> TokenBook:
    return TokenBook(kit.store, kit.clock)


def test_an_issued_token_names_its_user_and_only_its_hash_is_stored(
    kit: Kit, book: TokenBook
) -> None:
    issued = book.issue("alice", label="laptop", by="admin")
    assert issued.token.startswith(TOKEN_PREFIX) and len(issued.token) > 40
    assert issued.record.user == "alice" and issued.record.label == "laptop"
    assert issued.record.created_by == "admin"
    assert book.verify(issued.token) == "alice"
    with kit.store.read() as conn:
        stored = conn.execute(select(user_tokens)).all()
    assert [r.token_hash for r in stored] == [hash_secret(issued.token)]
    assert issued.token not in repr(stored)
    assert issued.record.id == hash_secret(issued.token)[:12]


def test_unknown_malformed_and_revoked_tokens_name_nobody(kit: Kit, book: TokenBook) -> None:
    issued = book.issue("bob", by="admin")
    assert book.verify("") is None
    assert book.verify("not-a-token") is None
    assert book.verify(TOKEN_PREFIX + "forged") is None
    revoked = book.revoke(issued.record.id[:8])
    assert revoked.revoked_at == kit.clock.now()
    assert book.verify(issued.token) is None
    assert book.tokens() == []
    assert [r.id for r in book.tokens(include_revoked=True)] == [issued.record.id]


def test_last_use_is_written_at_most_every_few_minutes(kit: Kit, book: TokenBook) -> None:
    issued = book.issue("alice", by="admin")
    book.verify(issued.token)
    first = book.tokens()[0].last_used_at
    assert first == kit.clock.now()
    kit.clock.advance(10)
    book.verify(issued.token)
    assert book.tokens()[0].last_used_at == first
    kit.clock.advance(TokenBook.TOUCH_EVERY)
    book.verify(issued.token)
    assert book.tokens()[0].last_used_at == kit.clock.now()


def test_bad_names_and_ids_are_refused_with_a_reason(book: TokenBook) -> None:
    with pytest.raises(InvalidRequest, match="user name"):
        book.issue("bad name!", by="admin")
    with pytest.raises(InvalidRequest, match="token id"):
        book.revoke("xyz")
    with pytest.raises(NotFound):
        book.revoke("0" * 12)


def test_list_by_user(book: TokenBook) -> None:
    book.issue("alice", by="admin")
    book.issue("bob", by="admin")
    book.issue("alice", label="second", by="admin")
    assert [r.label for r in book.tokens("alice")] == ["", "second"]
