"""ONNX Runtime session creation: providers, thread counts, honest GPU detection."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)
# Most images per actor call, as output pixels: caps sampling's default --batch-size and
# the test's cases per call (2048 images at 64 px, 128 at 256 px). Fewer, bigger calls cut
# Ray Data's per-block overhead: at 64 px, n = 20,000, 2048 ran 30% faster than 512.
BATCH_PIXELS = 2048 * 64 * 64
# Images per ONNX Runtime synthesis call, as output pixels; bounds an actor's activation
# memory at any resolution and batch size. On CPUs big activations fall out of cache: the
# 256-px reference generator runs about 1.5x faster at 1-4 images per call than at 16-32
# (`jobs.benchmark reference`), while the 64-px built-in model is as fast at 64 as at 512.
# GPUs want bigger calls (not measured here: no GPU on the development machines).
CALL_PIXELS = {"cpu": 64 * 64 * 64, "cuda": 512 * 64 * 64}
# Pixels say nothing of width: a 64-px StyleGAN2 at config-f widths (512 channels at 64 px)
# held 4.6 GB per sampling actor at 64 images per call. So a call is also capped at this many
# bytes of its largest intermediate tensor (per image, read from the graph by ONNX shape
# inference when the session is made): that model gets 15 images, the built-in one keeps 64.
# A graph whose intermediate shapes cannot be inferred keeps the pixel rule alone.
ACTIVATION_BYTES = {"cpu": 128 << 20, "cuda": 1 << 30}
PREFER_NHWC = False  # measured slower for fp16 on an H200 (1,209 vs 1,370 images/s); see cuda_options
CUDNN_SEARCH = "HEURISTIC"  # see cuda_options; jobs.benchmark gpu measures it against EXHAUSTIVE
USE_TF32 = True  # see cuda_options; jobs.benchmark gpu turns it off for its float32 reference scores
_warned_cpu_fallback = False  # one warning per process, not one per session


def cuda_options(gpu_mem_bytes: int | None = None, cuda_graph: bool = False, fp16: bool = False,
                 nhwc: bool = False) -> dict:
    """CUDAExecutionProvider settings, each a stated choice:
    - the arena grows only by what a call asks for, up to the actor's share of the GPU
      (unbounded, it kept what the largest call ever needed: 54 GB for 4 actors);
    - TF32 on for float32 graphs: their convolutions ran 2.4x faster with it on an H200
      (1,334 vs 556 images/s), differing from torch's fp32 by ~2e-2 relative at 1024 px.
      Off for fp16 graphs (`fp16`): their convolutions are fp16 anyway, and their float32
      parts are there for precision, which TF32 (fp16's 10-bit mantissa) would take from
      the mapping's and the styles' matrix products;
    - cuDNN's heuristic algorithm choice: as fast as the exhaustive search at steady state
      on an H200 (fp32, 256 px), without the search's seconds per shape at every actor start;
    - a CUDA graph only when asked: it needs every node on the GPU and fixed buffers;
    - NHWC layout only where a caller allows it (fp16 graphs) and PREFER_NHWC is set: off,
      since it was slower on an H200 (fp16 1,209 vs 1,370 images/s; fp32 synthesis -19%)."""
    options = {"arena_extend_strategy": "kSameAsRequested", "use_tf32": "1" if USE_TF32 and not fp16 else "0",
               "cudnn_conv_algo_search": CUDNN_SEARCH}
    if gpu_mem_bytes:
        options["gpu_mem_limit"] = str(int(gpu_mem_bytes))
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    if nhwc and PREFER_NHWC:
        options["prefer_nhwc"] = "1"
    return options


def make_session(model_bytes: bytes, threads: int = 1, use_gpu: bool = False, gpu_mem_bytes: int | None = None,
                 cuda_graph: bool = False, fp16: bool = False, nhwc: bool = False) -> ort.InferenceSession:
    """A session with `threads` intra-op threads, on CUDA when asked and really available;
    `fp16` says the graph is compute.fp16's (CUDA settings: cuda_options).

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
        cuda = cuda_options(gpu_mem_bytes, cuda_graph, fp16, nhwc)
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ORT's own note; ours below says it once
        session = ort.InferenceSession(model_bytes, options, providers=providers)
    global _warned_cpu_fallback
    if use_gpu and "CUDAExecutionProvider" not in session.get_providers() and not _warned_cpu_fallback:
        _warned_cpu_fallback = True
        log.warning("CUDA was requested but ONNX Runtime runs this session on the CPU "
                    "(no GPU, or onnxruntime-gpu/CUDA libraries missing)")
    if len(session.get_outputs()[0].shape) == 4:  # draws images: images_per_call reads this
        session.largest_activation = largest_activation(model_bytes)
    return session


def largest_activation(model_bytes: bytes) -> int | None:
    """Bytes per image of the graph's largest float32 intermediate tensor whose shape ONNX
    shape inference can tell (batch first, every other dim known); None if there is none."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(model_bytes)).graph
    except Exception:  # a graph the inference cannot read: the pixel rule alone
        return None
    largest = 0
    for value in graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if len(dims) < 2 or dims[0].HasField("dim_value") or not all(d.HasField("dim_value") for d in dims[1:]):
            continue
        largest = max(largest, 4 * int(np.prod([d.dim_value for d in dims[1:]])))
    return largest or None


def run_single(session: ort.InferenceSession, array: np.ndarray) -> np.ndarray:
    """Run a one-input, one-output graph; names come from the session, not literals.

    A graph that takes per-layer codes (B, L, D) also accepts one code per image (B, D):
    it is given to every layer, which is what an unedited or all-layer code means.
    """
    return session.run(None, {session.get_inputs()[0].name: per_layer(session, array)})[0]


def num_ws(session: ort.InferenceSession) -> int | None:
    """L for a graph that takes per-layer codes [B, L, D]; None for one that takes [B, D]."""
    shape = session.get_inputs()[0].shape
    return shape[1] if len(shape) == 3 and isinstance(shape[1], int) else None


def per_layer(session: ort.InferenceSession, codes: np.ndarray) -> np.ndarray:
    """codes as the graph's first input wants them: (B, D) broadcast to (B, L, D) where it takes W+."""
    layers = num_ws(session)
    codes = np.ascontiguousarray(codes, dtype=np.float32)
    if layers is None or codes.ndim != 2:
        return codes
    return np.ascontiguousarray(np.broadcast_to(codes[:, None, :], (len(codes), layers, codes.shape[1])))


def resolve(value):
    """Actor inputs arrive as Ray object refs on a cluster, or as plain values in-process."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def images_per_batch(resolution: int) -> int:
    """Most images per actor call at this resolution (see BATCH_PIXELS)."""
    return max(1, BATCH_PIXELS // resolution ** 2)


def _device(session: ort.InferenceSession) -> str:
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def images_per_call(synthesis: ort.InferenceSession) -> int:
    """Images per synthesis call for this graph's output size, widest activation and device
    (see CALL_PIXELS and ACTIVATION_BYTES)."""
    height, width = synthesis.get_outputs()[0].shape[-2:]
    if not (isinstance(height, int) and isinstance(width, int)):
        height = width = 256  # a graph with dynamic image size: assume the reference's
    return call_images(_device(synthesis), height * width, getattr(synthesis, "largest_activation", None))


def call_images(device: str, pixels: int, per_image: int | None) -> int:
    """The call-size rule: CALL_PIXELS of output, capped by ACTIVATION_BYTES of the widest
    intermediate tensor (bytes per image; None where shape inference cannot tell)."""
    images = max(1, CALL_PIXELS[device] // pixels)
    return max(1, min(images, ACTIVATION_BYTES[device] // per_image)) if per_image else images


def synthesize(synthesis: ort.InferenceSession, codes: np.ndarray) -> np.ndarray:
    """Images of codes (B, w_dim) or (B, L, w_dim), images_per_call at a time: a report grid
    of a 1024-px generator drawn in one call held 18 GB."""
    step = images_per_call(synthesis)
    if len(codes) <= step:
        return run_single(synthesis, codes)
    return np.concatenate([run_single(synthesis, codes[lo:lo + step]) for lo in range(0, len(codes), step)])


def synthesize_and_score(synthesis: ort.InferenceSession, scorer: ort.InferenceSession,
                         w: np.ndarray) -> np.ndarray:
    """Scores of the images of latents w (B, w_dim) or per-layer codes (B, L, w_dim), in
    memory-bounded sub-batches."""
    step = images_per_call(synthesis)
    parts = [score_images(synthesis, scorer, w[lo:lo + step]) for lo in range(0, len(w), step)]
    return np.concatenate(parts) if parts else np.zeros((0, scorer.get_outputs()[0].shape[1]), np.float32)


def score_images(synthesis: ort.InferenceSession, scorer: ort.InferenceSession, w: np.ndarray) -> np.ndarray:
    """w -> images -> scores with IO binding: the images stay where synthesis wrote them
    (GPU memory under CUDA) and go straight into the scorer; only scores come back."""
    device = _device(synthesis)
    make = synthesis.io_binding()
    make.bind_cpu_input(synthesis.get_inputs()[0].name, per_layer(synthesis, w))
    make.bind_output(synthesis.get_outputs()[0].name, device)
    synthesis.run_with_iobinding(make)
    score = scorer.io_binding()
    score.bind_ortvalue_input(scorer.get_inputs()[0].name, make.get_outputs()[0])
    score.bind_output(scorer.get_outputs()[0].name, "cpu")
    scorer.run_with_iobinding(score)
    return score.copy_outputs_to_cpu()[0]
