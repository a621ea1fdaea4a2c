"""Benchmarks behind make targets; figures are recorded in docs/benchmarks.md."""
