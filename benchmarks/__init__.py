"""Benchmarks of gpuloss against the formulas and libraries users would reach for instead."""
