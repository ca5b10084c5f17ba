"""The books: what is recorded in the store (allocations, idle state, jobs, tokens, policies).

Each book is built over a :class:`~jupyter_dlinfra.core.store.Store` and a clock.
"""
