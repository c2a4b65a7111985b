# The two commands of the README, plus the checks. Each target does its own set-up.
.PHONY: setup test demo lint bench chaos archive

setup:
	@bash scripts/bootstrap.sh

test: setup
	uv run pytest -q -p no:cacheprovider -m "not chaos"

demo: setup
	uv run spotleash demo

lint: setup
	uv run ruff check .
	uv run mypy

chaos: setup
	SPOTLEASH_CHAOS_RUNS=$${SPOTLEASH_CHAOS_RUNS:-3} uv run pytest -q -p no:cacheprovider -m chaos tests/chaos

bench: setup
	uv run python -m bench

archive: setup
	uv run python scripts/build_function_archive.py
