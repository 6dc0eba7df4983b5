"""Repeatable speed and memory measurements of the Side-Step core; run `python -m benchmarks` for the table."""
