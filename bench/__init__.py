"""Benchmarks: `python -m bench.<name>` (add `--smoke` for the seconds-long version the test
suite runs). Each prints its figures and a ratio to a baseline measured in the same run."""
