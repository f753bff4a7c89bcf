"""Benchmark suites (pytest-benchmark); ``python -m bench`` runs them all and records the results."""
