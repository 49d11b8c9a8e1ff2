"""Benchmarks of this GLoRA implementation against baselines timed in the same run: `python -m bench`."""
