"""Benchmarks against the ideal: `bash bench/run.sh all` (see docs/benchmarks.md)."""
