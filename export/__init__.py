"""Torch side: model definitions, scorer training, torch -> ONNX export with parity checks.

Only this package (and the jobs that export) imports torch; `compute` and `vectors` run on
ONNX Runtime and NumPy alone.
"""
