"""fp16 copies of bundle graphs for GPUs, with fp32 inputs and outputs kept.

Callers feed and read float32 exactly as with the fp32 graph; inside, weights and
activations are float16 (half the memory traffic, tensor cores on NVIDIA GPUs). Uses
onnxconverter-common's converter, which leaves ops that need fp32 alone.
"""
from __future__ import annotations

import warnings

import onnx


def to_fp16(model_bytes: bytes) -> bytes:
    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        # One warning per weight that fp16 rounds to zero or clips: expected, not actionable.
        warnings.simplefilter("ignore", UserWarning)
        model = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
    onnx.checker.check_model(model)
    return model.SerializeToString()
