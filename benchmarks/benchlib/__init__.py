"""Measurements, baselines and reports of the benchmark suite.

benchmarks/suite.py runs them; each module measures one aspect and
returns plain dataclasses that report.py prints and plot.py draws.
"""
