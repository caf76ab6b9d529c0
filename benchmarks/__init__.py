"""Benchmarks (see README "Performance"): sample_cpu.py, train_step.py; shared helpers in common.py."""
