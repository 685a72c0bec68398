"""Read NVIDIA StyleGAN2-ADA-PyTorch / StyleGAN3-repo network pickles without running them.

A network pickle (`network-snapshot-*.pkl`) is `pickle.dump` of a dict: `G`, `D`, `G_ema`,
`augment_pipe` and `training_set_kwargs`. Each network is a `torch_utils.persistence`
object: it pickles as `_reconstruct_persistent_obj(meta)`, where `meta` holds the source
of the module that defines its class (`module_src`, which NVIDIA's loader `exec`s), the
class name and the `nn.Module` state (`__dict__`: `_parameters`, `_buffers`, `_modules`
whose children are persistent objects too, `_init_kwargs`, plain attributes).

Here a restricted unpickler resolves an allow-list of globals only, each to a stand-in
that builds data and nothing else: a persistent object becomes a `PersistentRecord`
(class name, constructor arguments, attributes, tensors, children) and its source is
kept as text, never executed; tensors are rebuilt from their storages by
`torch.load(..., weights_only=True)`; numpy scalars and arrays from their raw bytes,
numeric dtypes only (export/pickle_data.py). Any other global (`os.system`,
`builtins.eval`, ...) is refused before it is called, so a hostile file fails with a
`CheckpointError` and runs nothing.

What a small file can make the reader build is bounded too (issue 22): the pickle has at
most `MAX_OPCODES` opcodes (counted in a first pass that builds nothing; a network pickle's
weights are a few hundred long byte strings, so even ffhq.pkl has far fewer), memo references
let a 700-byte pickle stand for a billion list items, so every container copied out of
the pickle and every network's tables count against `MAX_OBJECTS` for the whole file,
containers nest at most `MAX_DEPTH` deep, and networks at most `MAX_NETWORK_DEPTH`
deep with at most `MAX_NETWORK_ITEMS` modules and tensors each (shared sub-networks
counted every time they are reached, as walking them would).
"""
from __future__ import annotations

import builtins
import collections
import contextvars
import pickle
import pickletools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import torch

from export.checkpoints import CheckpointError, describe
from export.pickle_data import (
    NUMPY_NDARRAY,
    NumpyArray,
    NumpyDType,
    Refused,
    load_storage,
    numpy_reconstruct,
    numpy_scalar,
    rebuild_parameter,
    rebuild_tensor,
)

# nn.Module bookkeeping in a pickled module's state: the training flag and hook tables.
_MODULE_INTERNALS = frozenset({
    "training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
    "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_init_args", "_init_kwargs",
})
# What one file may make the reader build. A real network pickle (ffhq.pkl: G, D, G_ema and
# the augment pipe) has a few thousand settings and tensors, modules nest 5 deep and its
# settings 4 deep; these bounds are far above that and far below what exhausts a machine.
MAX_OPCODES = 2_000_000       # pickle opcodes: each builds at most one object (up to ~64 bytes for 2 bytes of file)
MAX_OBJECTS = 2_000_000       # container items copied out of the pickle, and networks' table entries
MAX_DEPTH = 64                # nesting of lists, tuples and dicts
MAX_NETWORK_DEPTH = 32        # nesting of persistent networks
MAX_NETWORK_ITEMS = 100_000    # modules and tensors under one network, shared ones counted each time
_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("nvidia_pickle_budget", default=None)


@dataclass(eq=False)
class PersistentRecord:
    """What a persistent NVIDIA network holds, recorded instead of built.

    `tensors` are this module's own parameters and buffers (`weight`, `noise_const`, ...);
    `children` its sub-modules by attribute name; `module_src` the embedded source code,
    kept as text only.
    """

    class_name: str
    init_args: tuple
    init_kwargs: dict
    attributes: dict
    tensors: dict[str, torch.Tensor]
    children: dict[str, PersistentRecord]
    version: int | None = None
    module_src: str = field(default="", repr=False)
    depth: int = field(default=1, repr=False)   # 1 + its deepest child's
    items: int = field(default=1, repr=False)   # modules and tensors in its tree, as walk() and state_dict() see it

    def __setstate__(self, state):  # a file's BUILD opcode may not patch a record
        raise Refused("tries to overwrite a recorded network's state")

    def __reduce__(self):  # copies rebuild from the fields, never through __setstate__
        return PersistentRecord, tuple(getattr(self, f.name) for f in fields(self))

    def walk(self, prefix: str = "") -> Iterator[tuple[str, PersistentRecord]]:
        """(dotted name, record) for this record ("") and every descendant."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.walk(f"{prefix}.{name}" if prefix else name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors by dotted name, as `nn.Module.state_dict()` names them."""
        return {f"{path}.{name}" if path else name: t
                for path, record in self.walk() for name, t in record.tensors.items()}

    def find(self, dotted: str) -> PersistentRecord | None:
        """The descendant at `dotted` (e.g. "synthesis.b8.conv0"), or None."""
        record = self
        for name in dotted.split(".") if dotted else []:
            record = record.children.get(name)
            if record is None:
                return None
        return record


class EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict`: the items, without attribute access."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.update(state)


def _first_line(exc: Exception) -> str:
    try:
        line = (str(exc).strip().splitlines() or [""])[0]
    except Exception:  # noqa: BLE001 - an exception whose message cannot be built (a deep repr)
        line = ""
    return f"{type(exc).__name__}: " + (line if len(line) <= 200 else line[:200] + "...")


def _spend(count: int) -> None:
    """Count `count` objects against the file's budget (MAX_OBJECTS)."""
    budget = _budget.get()
    if budget is None:  # called outside read_nvidia_pickle (which sets one per file): nothing to count against
        return
    budget[0] -= count
    if budget[0] < 0:
        raise Refused(f"expands to more than {MAX_OBJECTS:,} objects (containers shared through the "
                       f"pickle's memo and copied out, e.g. a 'billion laughs' file); no network pickle "
                       f"has that many")


def _plain(value, depth: int = 0):
    """EasyDicts (nested in lists, tuples, dicts) as plain dicts; numpy arrays as arrays.

    Every container copied counts against the file's budget with its items, shared ones each
    time they are reached, and containers nest at most MAX_DEPTH deep: a pickle cannot make
    this copy grow without bound or recurse past Python's stack.
    """
    if isinstance(value, NumpyArray):
        return value.value
    if not isinstance(value, (dict, list, tuple)):
        return value
    if depth >= MAX_DEPTH:
        raise Refused(f"nests lists, tuples or dicts more than {MAX_DEPTH} deep; no network pickle does")
    _spend(1 + len(value))
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    return type(value)(_plain(v, depth + 1) for v in value)


def _table(state: dict, key: str, name: str) -> dict:
    """One of a module state's tables (`_parameters`, `_buffers`, `_modules`): a dict by name."""
    table = state.get(key)
    if table is None:
        return {}
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise Refused(f"holds a {name} whose {key} is not a table of names")
    _spend(len(table))
    return table


def _persistent_record(meta) -> PersistentRecord:
    """Stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: records, never execs."""
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise Refused("holds a persistent object whose meta is not a dict with a 'state' dict")
    if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise Refused(f"holds a persistent object of type {describe(meta.get('type'))} named "
                       f"{describe(meta.get('class_name'))}; only classes are supported")
    name, state = describe(meta["class_name"], 60).strip("'"), meta["state"]
    if not all(isinstance(k, str) for k in state):
        raise Refused(f"holds a {name} whose state is not a table of attribute names")
    tensors = {}
    for table in ("_parameters", "_buffers"):
        tensors.update({k: v for k, v in _table(state, table, name).items() if v is not None})
    children = {k: v for k, v in _table(state, "_modules", name).items() if v is not None}
    for key, value in list(tensors.items()) + list(children.items()):
        if not isinstance(value, torch.Tensor if key in tensors else PersistentRecord):
            raise Refused(f"holds a {name} whose {describe(key)} is a {type(value).__name__}, "
                           f"not a tensor or a persistent network")
    depth = 1 + max((child.depth for child in children.values()), default=0)
    items = 1 + len(tensors) + sum(child.items for child in children.values())
    if depth > MAX_NETWORK_DEPTH or items > MAX_NETWORK_ITEMS:
        raise Refused(f"holds a {name} whose sub-networks nest {depth} deep with {items:,} modules and tensors "
                       f"(shared ones counted each time); a network has at most {MAX_NETWORK_DEPTH} levels and "
                       f"{MAX_NETWORK_ITEMS:,} of them")
    init_args, init_kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise Refused(f"holds a {name} whose constructor arguments are not a tuple and a dict")
    attributes = {k: _plain(v) for k, v in state.items() if k not in _MODULE_INTERNALS}
    src = meta.get("module_src")
    version = meta.get("version")
    return PersistentRecord(meta["class_name"], tuple(_plain(init_args)), _plain(init_kwargs), attributes, tensors,
                            children, version if isinstance(version, int) and not isinstance(version, bool) else None,
                            src if isinstance(src, str) else "", depth, items)


class _StandIn:
    """A stand-in function as the file sees it: callable, but a BUILD opcode cannot patch it."""

    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):  # BUILD calls this before it would set any attribute
        raise Refused(f"tries to modify the loader's {self._fn.__name__}")


# (module, name) -> what the global resolves to. Nothing here runs code named by the file.
ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _StandIn(_persistent_record),
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _StandIn(rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _StandIn(rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _StandIn(rebuild_parameter),
    ("torch.storage", "_load_from_bytes"): _StandIn(load_storage),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): builtins.set,
    ("builtins", "frozenset"): builtins.frozenset,
    ("numpy", "dtype"): NumpyDType,
    ("numpy", "ndarray"): NUMPY_NDARRAY,
    **{(f"numpy{core}.multiarray", name): _StandIn(fn) for core in (".core", "._core")  # numpy 1 / 2
       for name, fn in (("scalar", numpy_scalar), ("_reconstruct", numpy_reconstruct))},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        hint = ""
        if str(module).startswith("dnnlib.tflib"):
            hint = " (a TensorFlow StyleGAN pickle: convert it with NVIDIA's legacy.py where you trust it)"
        raise CheckpointError(f"{self._path} refers to {str(module)[:100]}.{str(name)[:100]}, which is not in "
                              f"the allow-list of an NVIDIA StyleGAN2 pickle; refusing to load it{hint}")


def _count_opcodes(f, path: Path) -> None:
    """Refuse a pickle of more than MAX_OPCODES opcodes, read as a stream before anything is built."""
    try:
        for count, _ in enumerate(pickletools.genops(f)):
            if count >= MAX_OPCODES:
                raise CheckpointError(f"{path} is a pickle of more than {MAX_OPCODES:,} opcodes, each of which "
                                      f"builds an object; a network pickle has far fewer (its weights are long "
                                      f"byte strings), so it is refused before it is read")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle: the same failure as the unpickler's
        raise CheckpointError(f"cannot read {path} as an NVIDIA network pickle ({_first_line(exc)})") from None


def read_nvidia_pickle(path) -> dict:
    """The top-level dict of an NVIDIA network pickle, networks as `PersistentRecord`s.

    Nothing from the file is executed; every refusal or read failure is one CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"network pickle not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
        if head == b"PK\x03\x04":
            raise CheckpointError(f"{path} is a torch zip checkpoint (torch.save), not an NVIDIA "
                                  f"network pickle; load it as a rosinality/state-dict checkpoint")
        f.seek(0)
        _count_opcodes(f, path)
        f.seek(0)
        token = _budget.set([MAX_OBJECTS])
        try:
            data = _RestrictedUnpickler(f, path).load()
            if not isinstance(data, dict):
                raise CheckpointError(f"{path} holds a {type(data).__name__}, not the dict of an NVIDIA network pickle")
            return _plain(data)
        except CheckpointError:
            raise
        except Refused as exc:
            raise CheckpointError(f"{path} {exc}; refusing to load it") from None
        except RecursionError:  # a structure nested past Python's stack on the way in
            raise CheckpointError(f"{path} nests its data deeper than Python can follow; no network pickle "
                                  f"does, refusing to load it") from None
        except MemoryError:
            raise CheckpointError(f"{path} asks for more memory than this machine has while it is read; "
                                  f"refusing to load it") from None
        except Exception as exc:  # pickle raises many types for corrupt or truncated input
            raise CheckpointError(f"cannot read {path} as an NVIDIA network pickle ({_first_line(exc)})") from None
        finally:
            _budget.reset(token)
