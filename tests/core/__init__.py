"""Tests of the pure core: the ledger, its store and its clock (no Jupyter involved)."""
