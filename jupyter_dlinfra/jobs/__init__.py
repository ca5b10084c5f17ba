"""Notebooks as batch jobs: conversion on the server (``convert``), execution in the job.

Nothing is imported here on purpose: ``python -m jupyter_dlinfra.jobs.runner`` imports this package
first, and a package that had already imported ``runner`` would make runpy warn into every job's
log. Import from the modules: ``jupyter_dlinfra.jobs.convert`` and ``jupyter_dlinfra.jobs.runner``.
"""

from __future__ import annotations

__all__: list[str] = []
