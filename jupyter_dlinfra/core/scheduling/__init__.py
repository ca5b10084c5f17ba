"""The scheduling engine, in memory: policy, fair share, ranking, the scheduler, explanations.

Nothing here reads or writes the store; the books in ``core/books`` load and persist its state.
"""
