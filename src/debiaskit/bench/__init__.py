"""Benchmarks: suites that run methods x datasets x seeds, resumable, and write tables."""
