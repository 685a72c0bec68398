"""Strict, safe loading of state dicts from user-supplied files.

Everything a checkpoint declares is bounded before it is acted on, so that a small file
cannot make a reader allocate much more than its own size (issue 22):

- a torch zip archive (`check_torch_zip`): its members' declared sizes against the file's
  size, before anything is inflated (torch.save stores members uncompressed);
- its pickle: at most `PICKLE_MAX_BYTES`, read as a stream (`detect_format`) or by torch's
  weights-only unpickler (`safe_torch_load`), which names a refused global in one line and
  never suggests an unsafe load;
- the tensors (`check_tensor_bytes`): no tensor is a view larger than the bytes stored for
  it (a stride-0 view of one number could stand for gigabytes once copied);
- the architecture: every hyper-parameter has a type and a range (`export.stylegan2`,
  `export.stylegan`), and a file's tensors are checked against the shapes of the network
  they describe (`expected_shapes`, on the meta device) before any network is built.
"""
from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

# The pickle of a torch checkpoint holds names, shapes and small values, never the weights
# (those are separate members): a 1024-px rosinality training checkpoint's (g, d, g_ema and
# both Adam states) is about 200 kB. An unpickler turns each byte of opcodes into up to ~40
# bytes of Python objects (measured: 15 MiB of "]a" took 580 MB), so this also bounds them.
PICKLE_MAX_BYTES = 8 << 20
# torch.save stores every member uncompressed (ratio 1); a re-zipped checkpoint of random
# weights deflates by a few percent. No real checkpoint inflates to 16 times its file size.
ZIP_MAX_RATIO = 16
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch names a global its weights-only load refuses
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation",
                      "In PyTorch 2.6", "Re-running", "Do it only", "(1)", "(2)")


class CheckpointError(ValueError):
    """A weights file is missing, unreadable, or does not fit the architecture."""


def describe(value, limit: int = 40) -> str:
    """A value read from a file, for an error message: short, and safe for any value (the repr
    of a 100,000-deep list recurses, that of a billion-element one never ends, and a
    10,000-digit int has no str)."""
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"
    try:
        size = f" of {len(value)}"
    except Exception:  # noqa: BLE001 - no length, or a broken __len__: the type alone
        size = ""
    return f"a {type(value).__name__}{size}"


def _first(keys, limit: int = 5) -> str:
    keys = sorted(k if isinstance(k, str) else describe(k) for k in keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(k if len(k) <= 100 else k[:100] + "..." for k in keys[:limit]) + more


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def is_torch_zip(path: Path) -> bool:
    """Whether torch.load reads `path` as a zip archive (its first bytes, as torch decides)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def check_torch_zip(path: Path, data: bytes | None = None) -> list[zipfile.ZipInfo]:
    """The members of the torch zip checkpoint `path`, once what they declare is bounded.

    Read from the central directory only, before any member is inflated: a pickle member
    larger than PICKLE_MAX_BYTES, members that declare more than ZIP_MAX_RATIO times the
    file's size in all, a stored member whose two sizes differ, a compression method torch
    does not read, or a repeated name are one CheckpointError. (torch and Python's zipfile
    both inflate a member into a buffer of its declared size, so declared sizes bound what
    a read allocates.) `data`: the archive's bytes, when it is not the file `path` itself.
    """
    path = Path(path)
    size = path.stat().st_size if data is None else len(data)
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, MemoryError) as exc:
        raise CheckpointError(f"{path} starts like a zip file but is not a readable torch checkpoint "
                              f"({type(exc).__name__}: {describe(str(exc), 120)})") from None
    names = [m.filename for m in members]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1}) if len(names) < 10_000 else ["..."]
        raise CheckpointError(f"{path} is a zip archive that holds {describe(twice[0], 60)} more than once; "
                              f"torch.save never writes such a file, so it is refused")
    for m in members:
        name = describe(m.filename, 60)
        if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"{path}: member {name} uses zip compression method {m.compress_type}; a torch "
                                  f"checkpoint's members are stored (torch.save) or deflated")
        if m.compress_size > size or (m.compress_type == zipfile.ZIP_STORED and m.file_size != m.compress_size):
            raise CheckpointError(f"{path}: member {name} declares {_bytes(m.file_size)} ({_bytes(m.compress_size)} "
                                  f"in the archive) in a file of {_bytes(size)}: a damaged or forged archive, "
                                  f"refused before it is read")
        if m.filename.endswith(".pkl") and m.file_size > PICKLE_MAX_BYTES:
            raise CheckpointError(f"{path}: its pickle {name} declares {_bytes(m.file_size)} uncompressed "
                                  f"({_bytes(m.compress_size)} in the file); a checkpoint's pickle holds names and "
                                  f"shapes, not weights, and more than {PICKLE_MAX_BYTES >> 20} MiB is refused "
                                  f"before it is inflated")
    declared = sum(m.file_size for m in members)
    if declared > ZIP_MAX_RATIO * max(size, 1):
        raise CheckpointError(f"{path}: its members declare {_bytes(declared)} uncompressed in a file of "
                              f"{_bytes(size)} ({declared / max(size, 1):.0f} x); torch.save stores members "
                              f"uncompressed and no checkpoint inflates to more than {ZIP_MAX_RATIO} x its size, "
                              f"so it is refused before anything is inflated")
    return members


def refused_global(exc: Exception) -> str | None:
    """The global (module.name) whose import torch's weights-only load refused, if that is why it failed."""
    found = _REFUSED_GLOBAL.search(str(exc))
    return found.group(1)[:200] if found else None


def torch_refusal(exc: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in a few words of one line: the global it
    refused if any, else torch's first informative sentence; never torch's advice to retry
    with the safe load turned off."""
    text = str(exc)
    found = refused_global(exc)
    if found:
        return f"it pickles {found}, which a safe (weights-only) load refuses and never runs"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith(_TORCH_BOILERPLATE)
                   and "weights_only" not in line), "")
    detail = detail.split(". ")[0]  # torch's first sentence says what failed
    return f"{type(exc).__name__}: {describe(detail, 200).strip(chr(39))}" if detail else type(exc).__name__


def safe_torch_load(path: Path, safe_globals=(), refused_advice: str = ""):
    """torch.load(path, weights_only=True) on a file whose archive was bounded first
    (`check_torch_zip`); every failure is one CheckpointError line. A refused global is named,
    followed by `refused_advice` (what the user can do), never by a suggestion to load unsafely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if is_torch_zip(path):
        check_torch_zip(path)
    try:
        with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on a pickle protocol: the one line is ours
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        if refused_global(exc):
            raise CheckpointError(f"{path} {torch_refusal(exc).removeprefix('it ')}"
                                  + (f"; {refused_advice}" if refused_advice else "")) from None
        raise CheckpointError(f"cannot read weights file {path} ({torch_refusal(exc)})") from None


def check_tensor_bytes(tensors, path: Path, what: str = "its tensors") -> None:
    """Refuse tensors that stand for more bytes than the file stores for them: a view larger
    than its storage (a stride-0 view of one number can have any shape, and becomes that
    large when copied) or views that overlap in one storage. `tensors` is (name, tensor) pairs;
    identical views (a tensor saved under two names) count once."""
    stored, views, total = {}, set(), 0
    for name, t in tensors:
        storage = t.untyped_storage()
        need = t.numel() * t.element_size()
        if need > storage.nbytes():
            label = name if isinstance(name, str) and len(name) <= 100 else describe(name, 100)
            raise CheckpointError(f"{path}: {label} is a {tuple(t.shape)} tensor ({_bytes(need)}) built on "
                                  f"{_bytes(storage.nbytes())} of stored data: a view that no checkpoint saves, "
                                  f"refused before it is copied")
        view = (storage.data_ptr(), storage.nbytes(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view not in views:
            views.add(view)
            total += need
        stored[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    if total > sum(stored.values()):
        raise CheckpointError(f"{path}: {what} span {_bytes(total)} but the file stores {_bytes(sum(stored.values()))} "
                              f"for them: tensors that overlap in their storage, which no checkpoint saves; "
                              f"refused before they are copied")


def expected_shapes(build) -> dict[str, tuple[int, ...]]:
    """The state dict shapes of the module `build()` makes, built on the meta device: no memory,
    so a file's tensors can be checked against a network before the network exists."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}


def load_state_dict_strict(model: nn.Module, path: Path, wrapper_keys=("state_dict",)) -> nn.Module:
    """Load `path` into `model` with weights_only=True; every mismatch is one error.

    A checkpoint dict that wraps the state dict under one of `wrapper_keys` is unwrapped.
    """
    return fit_state_dict(model, read_state_dict(path, wrapper_keys), path)


def read_state_dict(path: Path, wrapper_keys=("state_dict",)) -> dict[str, torch.Tensor]:
    """The state dict in `path`, read with weights_only=True and unwrapped from `wrapper_keys`."""
    state = safe_torch_load(path)
    for key in wrapper_keys:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    check_tensor_bytes(state.items(), path)
    return state


def check_fit(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Missing, unexpected and mis-shaped keys of `state` against `expected` shapes, as one error."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v)}"
                 for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped: {_first(misshaped, 3)}")
    if problems:
        raise CheckpointError(f"{path} does not fit {what}: " + "; ".join(problems))


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str | None = None) -> nn.Module:
    """Load `state` (read from `path`) into `model` strictly: missing, unexpected and mis-shaped
    keys are one error naming `what` the file should have held (default: the model's class)."""
    check_fit({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, path, what or type(model).__name__)
    model.load_state_dict(state, strict=True)
    return model
