"""Thin drivers: argument parsing, ray.init, wiring the stages, writing results.

Run them as `python -m jobs.<name>` from the repository root (or through
`ray job submit --working-dir . -- python -m jobs.<name> ...`).
"""
