"""Benchmarks: scripts that print figures. Not tests: pytest collects nothing here."""
