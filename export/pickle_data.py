"""The data a network pickle holds, rebuilt by stand-ins for the torch and numpy globals it
names (export.nvidia_pickle's allow-list resolves each to one of these): tensors from their
storages by torch.load(..., weights_only=True), numpy scalars and arrays from their raw bytes,
numeric dtypes only. Each checks what the file hands it and raises Refused, never running
anything the file names."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from export.checkpoints import CheckpointError, check_torch_zip, refused_global, torch_refusal

NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: plain bytes, no Python objects


class Refused(Exception):
    """Raised by a stand-in while unpickling; `read_nvidia_pickle` adds the path."""


def load_storage(data) -> torch.storage.TypedStorage:
    """Stand-in for `torch.storage._load_from_bytes`, which would call torch.load unrestricted."""
    if not isinstance(data, (bytes, bytearray)):
        raise Refused(f"holds a tensor storage given as {type(data).__name__}, not bytes")
    data = bytes(data)
    if data[:4] == b"PK\x03\x04":  # torch.load would read it as a zip archive: bounded first, like a file
        try:
            check_torch_zip(Path("the storage"), data)
        except CheckpointError as exc:
            raise Refused(f"holds a tensor storage whose zip archive is refused ({str(exc).split(': ', 1)[-1]})") \
                from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notices
            storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            nbytes = storage.nbytes() if isinstance(storage, torch.storage.TypedStorage) else 0
    except Exception as exc:  # torch raises several types for corrupt or unsafe bytes
        found = refused_global(exc)
        if found:  # the global by name; never torch's advice to load without the safe mode
            raise Refused(f"holds a tensor storage whose data pickles {found}, which a safe load refuses "
                           f"and never runs") from None
        raise Refused(f"holds a tensor storage that cannot be read ({torch_refusal(exc)})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise Refused(f"holds a tensor storage that is a {type(storage).__name__}")
    if nbytes > len(data):
        raise Refused(f"holds a tensor storage of {nbytes:,} bytes stored in {len(data):,}")
    return storage


def rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a view of the storage; hooks ignored."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise Refused(f"holds a tensor built on a {type(storage).__name__}, not a storage")
    try:
        return torch._utils._rebuild_tensor(storage, int(offset), tuple(size), tuple(stride))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise Refused(f"holds a tensor whose size/stride do not fit its storage ({exc})") from None


def rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    """Stand-in for `torch._utils._rebuild_parameter[_with_state]`: the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise Refused(f"holds a parameter whose data is a {type(data).__name__}")
    return data


class NumpyDType:
    """Stand-in for `numpy.dtype(name, align, copy)` + its byte-order state; numeric only."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or len(name) > 8:
            raise Refused(f"holds a numpy dtype named {name!r}")
        try:
            self.dtype = np.dtype(name)
        except TypeError:
            raise Refused(f"holds an unknown numpy dtype {name!r}") from None
        if self.dtype.kind not in NUMERIC_KINDS:
            raise Refused(f"holds a numpy dtype {name!r}, not a numeric one")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def numpy_scalar(dtype, data):
    """Stand-in for `numpy.core.multiarray.scalar`: the value as a Python number."""
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise Refused("holds a numpy scalar that is not a numeric value with its bytes")
    return np.frombuffer(data, dtype.dtype)[0].item()


class NumpyArray:
    """Stand-in for a pickled numpy array; the array is `.value` once its state is set."""

    value: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], NumpyDType)
                and isinstance(state[4], (bytes, bytearray))):
            raise Refused("holds a numpy array that is not numeric data with its bytes")
        _, shape, dtype, fortran, data = state
        try:
            array = np.frombuffer(bytes(data), dtype.dtype).reshape(tuple(shape), order="F" if fortran else "C")
        except (TypeError, ValueError) as exc:
            raise Refused(f"holds a numpy array whose bytes do not fit its shape ({exc})") from None
        self.value = array.copy()


NUMPY_NDARRAY = object()  # what the global numpy.ndarray resolves to: only a marker


def numpy_reconstruct(cls, shape, typecode):
    if cls is not NUMPY_NDARRAY:
        raise Refused("holds a numpy array of a class other than ndarray")
    return NumpyArray()

