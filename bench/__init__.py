"""Benchmarks: one command each, printing figures and ratios against named references."""
