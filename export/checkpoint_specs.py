"""A user's StyleGAN checkpoint and scorer as an exportable ModelSpec (`jobs.export --model stylegan2`).

    spec = checkpoint_spec(Path("ffhq.pkl"), Path("attributes.onnx"), ["smile", "age", "yaw"],
                           ScorerAdapter(size=224, value_range=(0, 1)), truncation=0.7)

The generator's format is read from the file itself, never from its name, and without
running anything in it (`detect_format`): a torch zip or legacy torch file is rosinality's
stylegan2-pytorch (`g_ema`, `style.N.*`) or genforce's StyleGAN (`mapping.dense0.*`); a
plain pickle is an NVIDIA network pickle. Each format's loader infers the architecture and
loads strictly. The bundle graphs are the generator's mapping (code -> w, optionally
truncated toward its average w) and its synthesis on per-layer codes (clipped to [-1, 1],
as saving an 8-bit image would); the scorer is the user's ONNX graph with the adapter in
front, or a Property Score CNN checkpoint as the reference trained it.
"""
from __future__ import annotations

import hashlib
import io
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from compute.files import sha256_file
from export.checkpoints import CheckpointError, check_torch_zip, describe
from export.onnx_bundle import ModelSpec, cpu_session, to_onnx_bytes
from export.scorer_adapter import ScorerAdapter, adapt_numpy, adapt_scorer

FORMATS = ("rosinality", "nvidia", "genforce")
PARITY_TOLERANCE = 1e-3   # relative, as for the reference models: deep nets at fp32
PARITY_CODES = 8
W_AVG_SAMPLES = 4096      # codes averaged for w_avg when a checkpoint stores none (rosinality's mean_latent)
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Strings whose presence in a torch checkpoint's pickle names its layout.
_MARKERS = {"rosinality": ("g_ema", "style.1.weight"), "genforce": ("mapping.dense0.weight", "generator_smooth")}


def _pickle_strings(stream, limit: int = 200_000) -> set[str]:
    """String constants of one pickle, read opcode by opcode from `stream` (a file or archive
    member, never read whole): nothing is built or run, and at most `limit` opcodes are read."""
    found = set()
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(stream)):
            if isinstance(arg, str):
                found.add(arg)
            if count > limit:
                break
    except Exception:  # a damaged pickle: what was read so far decides
        pass
    return found


def detect_format(path: Path) -> str:
    """rosinality, nvidia or genforce, from the file's contents; CheckpointError otherwise.

    A torch zip's members are bounded from its central directory first (`check_torch_zip`:
    a zip bomb is refused before anything is inflated), then its pickle is read as a stream.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"generator checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        members = check_torch_zip(path)
        pickle_member = next((m for m in members if m.filename.endswith("data.pkl")), None)
        if pickle_member is None:
            raise CheckpointError(f"{path} is a zip file but not a torch checkpoint (it has no data.pkl)")
        try:
            with zipfile.ZipFile(path) as archive, archive.open(pickle_member) as stream:
                strings = _pickle_strings(stream)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
            raise CheckpointError(f"{path} is a zip file but not a readable torch checkpoint "
                                  f"({type(exc).__name__}: {describe(str(exc), 120)})") from None
    elif head[:1] == b"\x80":
        strings = _legacy_torch_strings(path)
        if strings is None:  # a plain pickle: NVIDIA's network pickles are
            return "nvidia"
    else:
        raise CheckpointError(f"{path} is neither a torch checkpoint (.pt/.pth) nor a pickle (.pkl); "
                              f"formats read: {', '.join(FORMATS)}")
    for fmt, markers in _MARKERS.items():
        if any(m in strings for m in markers):
            return fmt
    raise CheckpointError(f"{path} is a torch checkpoint of no known StyleGAN layout (no g_ema / style.1.weight "
                          f"for rosinality, no mapping.dense0.weight for genforce)")


def _legacy_torch_strings(path: Path) -> set[str] | None:
    """The strings of a pre-zip torch file, which is a row of pickles starting with a pickled
    magic number; None for any other pickle. Only a legacy file is read past its first bytes,
    as a stream: an NVIDIA pickle can be hundreds of MB."""
    with open(path, "rb") as f:
        head = io.BytesIO(f.read(64))
        try:  # the magic number's own pickle: PROTO, LONG1, STOP
            first = [arg for _, arg, _ in pickletools.genops(head)]
        except Exception:  # a longer pickle ends mid-opcode in 64 bytes: not the magic number's
            return None
        if _TORCH_LEGACY_MAGIC not in first:
            return None
        f.seek(head.tell())
        strings = set()
        for _ in range(3):  # protocol version, system info, then the checkpoint itself
            strings |= _pickle_strings(f)
    return strings


@dataclass
class Generator:
    """A loaded generator, whatever its format: what the bundle graphs and manifest need."""

    format: str
    model: nn.Module              # StyleGAN2 (rosinality layout) or genforce's ReferenceGenerator
    z_dim: int                    # the code the mapping takes (genforce: z then its label dims)
    label_dim: int
    w_dim: int
    num_ws: int
    resolution: int
    w_avg: torch.Tensor | None    # the average w the checkpoint stores, if any
    architecture: dict


def load_generator(path: Path) -> Generator:
    fmt = detect_format(path)
    if fmt == "genforce":
        from export.genforce import load_genforce

        config, model = load_genforce(path)
        return Generator(fmt, model, config.code_dim, config.label_dim, config.w_dim, config.num_ws,
                         config.resolution, model.truncation.w_avg.detach().clone(),
                         {"family": "StyleGAN (genforce)", "mapping_layers": config.mapping_layers,
                          "channels": dict(zip(map(str, _resolutions(config.resolution)), config.channels))})
    if fmt == "nvidia":
        from export.nvidia import load_nvidia

        config, model, w_avg = load_nvidia(path)
    else:
        from export.rosinality import load_rosinality

        config, model, w_avg = load_rosinality(path)
    return Generator(fmt, model, config.z_dim, 0, config.w_dim, config.num_ws, config.resolution, w_avg,
                     {"family": "StyleGAN2", "n_mlp": config.n_mlp, "lr_mlp": config.lr_mlp,
                      "conv_clamp": config.conv_clamp, "channels": {str(r): c for r, c in config.channels},
                      "multiply_adds_per_image": config.multiply_adds()})


def _resolutions(resolution: int) -> list[int]:
    return [4 << i for i in range(int(np.log2(resolution)) - 1)]


class MappingGraph(nn.Module):
    """Bundle graph `mapping`: code [B, z_dim] -> w [B, w_dim], truncated toward w_avg when psi < 1.
    A genforce code is z followed by its label dims."""

    def __init__(self, generator: Generator, psi: float = 1.0, w_avg: torch.Tensor | None = None):
        super().__init__()
        self.model, self.psi = generator.model, psi
        self.genforce, self.z_dim = generator.format == "genforce", generator.z_dim - generator.label_dim
        self.labelled = generator.label_dim > 0
        self.register_buffer("w_avg", torch.zeros(generator.w_dim) if w_avg is None else w_avg.clone())

    def forward(self, code):  # (B, z_dim) -> (B, w_dim)
        if self.genforce:
            w = self.model.mapping(code[:, :self.z_dim], code[:, self.z_dim:] if self.labelled else None)
        else:
            w = self.model.mapping(code)
        return w if self.psi == 1.0 else self.w_avg + self.psi * (w - self.w_avg)


class SynthesisGraph(nn.Module):
    """Bundle graph `synthesis`: ws [B, num_ws, w_dim] -> image [B, 3, R, R] clipped to [-1, 1]
    (the reference saved every image as an 8-bit file before scoring it, which clips)."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.model = generator.model

    def forward(self, ws):  # (B, num_ws, w_dim) -> (B, 3, R, R)
        return torch.clamp(self.model.synthesis(ws), -1.0, 1.0)


MODEL_NAMES = {"rosinality": "stylegan2-rosinality", "nvidia": "stylegan2-nvidia", "genforce": "stylegan-genforce"}


def is_onnx(path: Path) -> bool:
    """An ONNX file is a protobuf whose first field is ir_version (tag byte 0x08)."""
    with open(path, "rb") as f:
        return path.suffix.lower() == ".onnx" or f.read(1) == b"\x08"


@dataclass
class Scorer:
    graph: nn.Module | bytes      # a torch module, or ONNX bytes with the adapter in front
    score_names: list[str]
    reference: object             # image tensor -> scores tensor, for parity; None: `graph` is torch
    adapter: ScorerAdapter        # the adapter in front of it
    entry: dict                   # what the manifest records of the scorer file


def scorer_graph(path: Path, score_names: list[str] | None, adapter: ScorerAdapter, resolution: int) -> Scorer:
    """The scorer in `path` as the bundle's scorer graph, reading the generator's images.

    An ONNX scorer gets the adapter in front of it, and its reference is the user's graph on
    images adapted independently (torch's antialiased resize in NumPy), so the adapter has a
    parity figure. A Property Score CNN checkpoint is the reference's 256-px scorer: other
    resolutions are resized to 256 px unless --scorer-size says otherwise.
    """
    from export.onnx_user import load_user_graph, rename_graph_io

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"scorer file not found: {path}")
    entry = {"file": path.name, "sha256": sha256_file(path)}
    if is_onnx(path):
        if not score_names:
            raise CheckpointError(f"{path} is an ONNX scorer: name its output columns in order with --score-names a,b,c")
        raw = load_user_graph(path, "scorer").SerializeToString()  # external data: its own directory, inlined
        try:
            onnx.checker.check_model(onnx.load_from_string(raw))
            adapted = rename_graph_io(adapt_scorer(raw, adapter, resolution), "image", "scores")
        except ValueError as exc:
            raise CheckpointError(f"scorer {path}: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:  # protobuf and the checker raise several types
            raise CheckpointError(f"scorer {path} is not a valid ONNX graph: {str(exc).splitlines()[0]}") from exc
        session = cpu_session(raw)
        name = session.get_inputs()[0].name

        def reference(image: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: adapt_numpy(image.numpy(), adapter, resolution)
                                                       .astype(np.float32)})[0])

        return Scorer(adapted, list(score_names), reference, adapter, dict(entry, format="onnx"))
    from export.ohlora import load_scorer
    from export.property_cnn import SCORE_NAMES, SIZE

    cnn = load_scorer(path)
    names = list(score_names or SCORE_NAMES)
    if len(names) != len(SCORE_NAMES):
        raise CheckpointError(f"the Property Score CNN gives {len(SCORE_NAMES)} scores ({', '.join(SCORE_NAMES)}); "
                              f"--score-names names {len(names)}")
    entry = dict(entry, format="property-score-cnn")
    if adapter.size is None and resolution != SIZE:
        adapter = ScorerAdapter(SIZE, adapter.value_range, adapter.mean, adapter.std)
    if adapter.is_identity(resolution):
        return Scorer(cnn, names, None, adapter, entry)
    adapted = adapt_scorer(to_onnx_bytes(cnn, torch.zeros(2, 3, adapter.size or resolution, adapter.size
                                                          or resolution), "image", "scores"), adapter, resolution)

    def cnn_reference(image: torch.Tensor) -> torch.Tensor:
        return cnn(torch.from_numpy(adapt_numpy(image.numpy(), adapter, resolution).astype(np.float32)))

    return Scorer(adapted, names, cnn_reference, adapter, entry)


@torch.no_grad()
def mean_w(generator: Generator, samples: int = W_AVG_SAMPLES, seed: int = 0) -> torch.Tensor:
    """The average w of `samples` seeded codes: the truncation centre of a checkpoint that stores none."""
    code = torch.randn(samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    return MappingGraph(generator)(code).mean(0)


def checkpoint_spec(generator_path: Path, scorer_path: Path, score_names: list[str] | None = None,
                    adapter: ScorerAdapter = ScorerAdapter(), truncation: float = 1.0,
                    median_samples: int = 256) -> ModelSpec:
    """The ModelSpec of a user's generator checkpoint (any of FORMATS) and scorer."""
    if not 0.0 < truncation <= 1.0:
        raise CheckpointError(f"--truncation must be in (0, 1] (1: none), got {truncation:g}")
    generator = load_generator(generator_path)
    scorer = scorer_graph(scorer_path, score_names, adapter, generator.resolution)
    w_avg, w_avg_source = generator.w_avg, "stored in the checkpoint"
    if truncation < 1.0 and w_avg is None:
        w_avg, w_avg_source = mean_w(generator), f"mean of {W_AVG_SAMPLES} seeded codes' w (none stored)"
    source = hashlib.sha256((sha256_file(Path(generator_path)) + scorer.entry["sha256"]).encode())
    return ModelSpec(
        name=MODEL_NAMES[generator.format],
        mapping=MappingGraph(generator, truncation, w_avg).eval(), synthesis=SynthesisGraph(generator).eval(),
        scorer=scorer.graph, scorer_reference=scorer.reference,
        z_dim=generator.z_dim, label_dim=generator.label_dim, w_dim=generator.w_dim,
        resolution=generator.resolution, num_ws=generator.num_ws, score_names=scorer.score_names,
        group_medians=None, median_samples=median_samples,
        source_sha256=source.hexdigest(), parity_tolerance=PARITY_TOLERANCE, parity_codes=PARITY_CODES,
        extra_manifest={
            "generator": {"format": generator.format, "file": Path(generator_path).name, **generator.architecture,
                          "truncation_psi": truncation,
                          **({"truncation_w_avg": w_avg_source} if truncation < 1.0 else {}),
                          "noise": "constant (the checkpoint's buffers)", "image": "clipped to [-1, 1]"},
            "scorer": scorer.entry,
            "scorer_adapter": scorer.adapter.to_dict()},
    )
