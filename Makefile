# The two commands of the README. Both work on a fresh Debian machine with Python 3.11.
.PHONY: lab test lint bench

lab:
	./scripts/lab.sh

test:
	./scripts/test.sh

lint:
	.venv/bin/ruff check jupyter_dlinfra tests benchmarks
	.venv/bin/ruff format --check jupyter_dlinfra tests benchmarks
	.venv/bin/mypy

bench:
	.venv/bin/python benchmarks/grant_latency.py
	.venv/bin/python benchmarks/kernel_start.py
