"""Baseline submissions in the upstream AlgoPerf format, each with its tuning search space JSON."""
