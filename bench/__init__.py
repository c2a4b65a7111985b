"""spotleash benchmarks: ``uv run python -m bench [--quick]`` (or ``make bench``).

Every figure is measured against the local stack (Google's Pub/Sub and Firestore emulators, the
Compute / VAST / Scheduler fakes, the functions under functions-framework) and compared with a
baseline measured in the same run. Results go to ``bench/results/latest.json`` and to the table of
``docs/benchmarks.md`` between ``<!-- bench:start -->`` and ``<!-- bench:end -->``. Nothing here asserts a timing.
"""
