"""Strict, safe loading of state dicts from user-supplied files."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointError(ValueError):
    """A weights file is missing, unreadable, or does not fit the architecture."""


def _first(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_strict(model: nn.Module, path: Path, wrapper_keys=("state_dict",)) -> nn.Module:
    """Load `path` into `model` with weights_only=True; every mismatch is one error.

    A checkpoint dict that wraps the state dict under one of `wrapper_keys` is unwrapped.
    """
    return fit_state_dict(model, read_state_dict(path, wrapper_keys), path)


def read_state_dict(path: Path, wrapper_keys=("state_dict",)) -> dict[str, torch.Tensor]:
    """The state dict in `path`, read with weights_only=True and unwrapped from `wrapper_keys`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    for key in wrapper_keys:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str | None = None) -> nn.Module:
    """Load `state` (read from `path`) into `model` strictly: missing, unexpected and mis-shaped
    keys are one error naming `what` the file should have held (default: the model's class)."""
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped: {_first(misshaped, 3)}")
    if problems:
        raise CheckpointError(f"{path} does not fit {what or type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model
