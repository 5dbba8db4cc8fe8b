"""Tessera's benchmarks (docs/architecture.md §1): each a `python -m bench.NAME` that measures
on this machine, prints a table with its command and machine line, and with `--record` writes it
into docs/benchmarks.md (bench/common.py). Targets live here and there, never in timed tests;
tests/test_bench.py runs each in a smoke size."""
