"""ONNX Runtime session creation: providers, thread counts, honest GPU detection."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)
_warned_cpu_fallback = False  # one warning per process, not one per session


def make_session(model_bytes: bytes, threads: int = 1, use_gpu: bool = False) -> ort.InferenceSession:
    """A session with `threads` intra-op threads, on CUDA when asked and really available.

    onnxruntime-gpu reports CUDA as available even on machines without a GPU and then falls
    back silently, so success is read from the providers the session actually got.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Sessions run one after another (mapping -> synthesis -> scorer); spinning worker
    # threads of an idle session would steal the cores of the busy one.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if use_gpu:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ORT's own note; ours below says it once
        session = ort.InferenceSession(model_bytes, options, providers=providers)
    global _warned_cpu_fallback
    if use_gpu and "CUDAExecutionProvider" not in session.get_providers() and not _warned_cpu_fallback:
        _warned_cpu_fallback = True
        log.warning("CUDA was requested but ONNX Runtime runs this session on the CPU "
                    "(no GPU, or onnxruntime-gpu/CUDA libraries missing)")
    return session


def run_single(session: ort.InferenceSession, array: np.ndarray) -> np.ndarray:
    """Run a one-input, one-output graph; names come from the session, not literals."""
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def resolve(value):
    """Actor inputs arrive as Ray object refs on a cluster, or as plain values in-process."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value
