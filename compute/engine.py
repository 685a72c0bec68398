"""The sampling engine: codes in, w and scores out, with images kept inside one graph.

mapping -> per-layer broadcast -> synthesis -> scorer are fused into one ONNX graph
(`fuse_sampling_graph`), so an image never leaves the device it was drawn on and there is
no hand-off between sessions to bind. On a GPU the graph runs in fp16 with fp32 islands
(compute.fp16), after exact rewrites that cut its element-wise passes
(compute.gpu_rewrites), in calls of one fixed size (the last call of a batch is padded), so cuDNN
searches its algorithms once and a CUDA graph can replay the whole call; inputs and
outputs live in device buffers bound once. A bundle whose graphs cannot be fused (opsets
that do not convert) runs the three sessions in turn, as compute.sessions does.

`NullEngine` has the same interface and returns zeros at once: the pipeline's own ceiling.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from compute.sessions import call_images, largest_activation, make_session, run_single, synthesize_and_score

if TYPE_CHECKING:  # onnx is imported where graphs are built, on the driver: actors only run them
    import onnx

log = logging.getLogger(__name__)
# Images per GPU call at 256 px (scaled by pixels at other resolutions), measured on an H200
# with `python -m jobs.benchmark gpu` (docs/gpu.md): 64 / 128 / 256 per call ran at 1,452 /
# 1,528 / 1,558 images/s, but 128 held 17.6 GiB per actor. 96 keeps an actor near 14 GiB
# (two actors share a GPU) at about 2% below 128's speed.
GPU_CALL_IMAGES_256 = 96


@dataclass(frozen=True)
class EngineSpec:
    """What an actor needs to build its engine; plain values, so it travels to Ray actors."""

    z_dim: int
    w_dim: int
    num_ws: int | None
    resolution: int
    scores: int
    use_gpu: bool = False
    threads: int = 1
    fp16: bool = True              # on a GPU only; CPU sessions always run the fp32 graph
    gpu_share: float = 1.0         # of its GPU's memory, the most the actor's arena may take
    call_images: int | None = None    # None: the measured default for the device
    cuda_graph: bool = False


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _broadcast_graph(w_dim: int, num_ws: int, opset: int) -> onnx.ModelProto:
    """w [B, D] -> ws [B, L, D]: the per-layer codes of an unedited face, on the device."""
    from onnx import TensorProto, helper

    shape = helper.make_tensor("layers_shape", TensorProto.INT64, [3], [1, num_ws, 1])
    axes = helper.make_tensor("axis_1", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [helper.make_node("Unsqueeze", ["w", "axis_1"], ["w_1"]),
         helper.make_node("Tile", ["w_1", "layers_shape"], ["ws"])],
        "broadcast", [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["batch", w_dim])],
        [helper.make_tensor_value_info("ws", TensorProto.FLOAT, ["batch", num_ws, w_dim])], [shape, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def fuse_sampling_graph(mapping: bytes, synthesis: bytes, scorer: bytes, w_dim: int, num_ws: int | None) -> bytes:
    """One graph z -> (w, scores) from the bundle's three. Raises ValueError if they cannot be
    brought to one opset."""
    import onnx
    from onnx import TensorProto, compose, helper, version_converter

    models = [onnx.load_from_string(b) for b in (mapping, synthesis, scorer)]
    opset = max(_opset(m) for m in models)
    try:
        models = [m if _opset(m) == opset else version_converter.convert_version(m, opset) for m in models]
    except Exception as exc:  # the converter raises several types for ops it cannot move
        raise ValueError(f"the bundle's graphs are of different opsets and do not convert: {exc}") from exc
    for m in models:
        m.ir_version = 8
        del m.opset_import[:]
        m.opset_import.extend([helper.make_opsetid("", opset)])
    mapping_m, synthesis_m, scorer_m = [compose.add_prefix(m, p) for m, p in zip(models, ("m/", "s/", "c/"))]
    w_name, image_name = mapping_m.graph.output[0].name, synthesis_m.graph.output[0].name
    codes_name = synthesis_m.graph.input[0].name
    fused = mapping_m
    if num_ws:
        broadcast = compose.add_prefix(_broadcast_graph(w_dim, num_ws, opset), "b/")
        fused = compose.merge_models(fused, broadcast, io_map=[(w_name, "b/w")])
        codes_source = "b/ws"
    else:
        codes_source = w_name
    fused = compose.merge_models(fused, synthesis_m, io_map=[(codes_source, codes_name)])
    fused = compose.merge_models(fused, scorer_m, io_map=[(image_name, scorer_m.graph.input[0].name)])
    # Outputs: w (the mapping's) and the scores, under plain names.
    graph = fused.graph
    scores_name = scorer_m.graph.output[0].name
    graph.node.extend([helper.make_node("Identity", [w_name], ["w"], name="out_w"),
                       helper.make_node("Identity", [scores_name], ["scores"], name="out_scores")])
    w_dims = [d.dim_value for d in models[0].graph.output[0].type.tensor_type.shape.dim[1:]]
    s_dims = [d.dim_value for d in models[2].graph.output[0].type.tensor_type.shape.dim[1:]]
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, ["batch", *w_dims]),
                         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", *s_dims])])
    onnx.checker.check_model(fused)
    return fused.SerializeToString()


def gpu_call_images(resolution: int) -> int:
    """The measured GPU call size at 256 px, scaled by pixels (at least one image)."""
    return max(1, GPU_CALL_IMAGES_256 * 256 * 256 // resolution ** 2)


def cpu_call_images(synthesis: bytes, resolution: int) -> int:
    """Images per CPU call for this synthesis graph (compute.sessions.call_images)."""
    return call_images("cpu", resolution ** 2, largest_activation(synthesis))


def prepare_graphs(graphs: dict[str, bytes], spec: EngineSpec) -> dict:
    """What every actor's engine loads, made once on the driver: {"fused": graph} (fp16 inside
    where the actors run on GPUs, plus the fp32 graph as "fused32" for a CPU fallback), or
    the three bundle graphs where they cannot be fused."""
    try:
        fused = fuse_sampling_graph(graphs["mapping"], graphs["synthesis"], graphs["scorer"], spec.w_dim,
                                    spec.num_ws)
    except ValueError as exc:
        log.warning("running the bundle's three graphs in turn: %s", exc)
        return dict(graphs)
    # The CPU call size needs the synthesis graph's shapes: read once here, not in every actor.
    prepared = {"fused32": fused, "cpu_call": cpu_call_images(graphs["synthesis"], spec.resolution)}
    if spec.use_gpu and spec.fp16:
        from compute.fp16 import to_fp16
        from compute.gpu_rewrites import rewrite_for_gpu

        try:
            prepared["fused"] = to_fp16(rewrite_for_gpu(fused))
        except ValueError as exc:  # a user's graph with ops the converter does not take (Loop, Scan)
            log.warning("running the float32 graph on the GPU: %s", exc)
    return prepared


class SampleEngine:
    """z [B, z_dim] -> (w [B, w_dim], scores [B, S]) in fixed-size calls."""

    def __init__(self, graphs: dict[str, bytes], spec: EngineSpec):
        self.spec = spec
        if "fused32" not in graphs:
            graphs = prepare_graphs(graphs, spec)
        if "fused32" not in graphs:
            self.sessions = {s: make_session(graphs[s], spec.threads, spec.use_gpu)
                             for s in ("mapping", "synthesis", "scorer")}
            self.session = None
            return
        memory = None
        if spec.use_gpu:
            from compute.resources import gpu_memory_bytes

            total = gpu_memory_bytes()
            memory = int(total * spec.gpu_share) if total else None
        self.session = None
        if "fused" in graphs:
            try:
                session = make_session(graphs["fused"], spec.threads, True, memory, cuda_graph=spec.cuda_graph,
                                       fp16=True, nhwc=True)
            except Exception as exc:  # a layout ONNX Runtime cannot apply to some node: keep NCHW
                log.warning("NHWC layout refused (%s); running NCHW", str(exc).splitlines()[0][:200])
                session = make_session(graphs["fused"], spec.threads, True, memory, cuda_graph=spec.cuda_graph,
                                       fp16=True)
            # No GPU after all (make_session has warned): the CPU runs the fp32 graph, exactly.
            self.session = session if session.get_providers()[0] == "CUDAExecutionProvider" else None
        if self.session is None:
            self.session = make_session(graphs["fused32"], spec.threads, spec.use_gpu, memory,
                                        cuda_graph=spec.use_gpu and spec.cuda_graph)
        self.on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = "cuda" if self.on_gpu else "cpu"
        self.call = spec.call_images or (gpu_call_images(spec.resolution) if self.on_gpu else graphs["cpu_call"])
        self.input_name = self.session.get_inputs()[0].name
        self._bound = None

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.ascontiguousarray(z, dtype=np.float32)
        if self.session is None:
            w = run_single(self.sessions["mapping"], z)
            return w, synthesize_and_score(self.sessions["synthesis"], self.sessions["scorer"], w)
        w = np.empty((len(z), self.spec.w_dim), np.float32)
        scores = np.empty((len(z), self.spec.scores), np.float32)
        for lo in range(0, len(z), self.call):
            part = z[lo:lo + self.call]
            rows = len(part)
            if rows < self.call:  # one shape for every call: cuDNN searches once, a CUDA graph replays
                part = np.concatenate([part, np.zeros((self.call - rows, z.shape[1]), np.float32)])
            w_part, s_part = self._infer(part)
            w[lo:lo + rows], scores[lo:lo + rows] = w_part[:rows], s_part[:rows]
        return w, scores

    def _infer(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.on_gpu:
            return tuple(self.session.run(["w", "scores"], {self.input_name: z}))
        import onnxruntime as ort

        if self._bound is None:  # device buffers bound once: the addresses a CUDA graph needs
            outputs = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device, 0)
                       for shape in ((self.call, self.spec.w_dim), (self.call, self.spec.scores))]
            # A buffer of its own: on the CPU ortvalue_from_numpy would wrap (and later
            # overwrite) the caller's array instead of copying it.
            source = ort.OrtValue.ortvalue_from_shape_and_type(z.shape, np.float32, self.device, 0)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, source)
            binding.bind_ortvalue_output("w", outputs[0])
            binding.bind_ortvalue_output("scores", outputs[1])
            self._bound = (binding, source, outputs)
        binding, source, outputs = self._bound
        source.update_inplace(z)
        self.session.run_with_iobinding(binding)
        return outputs[0].numpy().copy(), outputs[1].numpy().copy()


class NullEngine(SampleEngine):
    """Zeros of the right shapes at once: everything of the pipeline but the inference."""

    def __init__(self, graphs: dict[str, bytes] | None, spec: EngineSpec):
        self.spec, self.session, self.on_gpu = spec, True, False
        self.call = spec.call_images or gpu_call_images(spec.resolution)

    def _infer(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(z), self.spec.w_dim), np.float32), np.zeros((len(z), self.spec.scores), np.float32)
