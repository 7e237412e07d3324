"""Benchmarks (make bench); shared pieces live in modules here."""
