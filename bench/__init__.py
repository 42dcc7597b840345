"""Benchmarks of skiplock: programs that print measurements, not tests."""
