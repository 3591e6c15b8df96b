"""Training checkpoints as safetensors: model, optimizer, generators and metadata in one file.

A checkpoint holds everything a resumed run needs to continue exactly where it stopped:

* ``model.<key>``: the model's state dict;
* ``optimizer.<i>.<name>``: the optimizer's per-parameter tensor state (Adam's moments, ...);
  its non-tensor state (step counts stored as numbers, param groups) goes to the metadata;
* ``generator.<name>``: the states of the trainer's ``torch.Generator``s (uint8);
* metadata (strings): ``advex.checkpoint`` (format version), ``epoch``, and JSON documents
  ``config``, ``objective``, ``optimizer`` and ``history``.

Nothing is unpickled on load: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = ["Checkpoint", "latest", "load", "save"]

_FORMAT = "1"
_PREFIX = "epoch-"


@dataclass
class Checkpoint:
    """One checkpoint read back: the epoch it closes (1-based) and its parts."""

    epoch: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    generators: dict[str, Tensor]
    config: dict[str, Any]
    objective: dict[str, Any]
    history: list[dict[str, Any]]


def path_for(folder: Path, epoch: int) -> Path:
    """``folder/epoch-0007.safetensors`` for epoch 7."""
    return folder / f"{_PREFIX}{epoch:04d}.safetensors"


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        scalars: dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.ndim > 0:
                tensors[f"optimizer.{idx}.{name}"] = value.detach().cpu().contiguous()
            elif isinstance(value, Tensor):
                scalars[name] = {"tensor": value.item(), "dtype": str(value.dtype)[6:]}
            else:
                scalars[name] = value
        rest["state"][str(idx)] = scalars
    return tensors, rest


def _join_optimizer(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, scalars in rest["state"].items():
        entry: dict[str, Any] = {}
        for name, value in scalars.items():
            if isinstance(value, dict) and "tensor" in value:
                entry[name] = torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
            else:
                entry[name] = value
        state[int(idx)] = entry
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save(
    folder: str | os.PathLike[str],
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    *,
    config: dict[str, Any],
    objective: dict[str, Any],
    history: list[dict[str, Any]],
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``epoch`` atomically (temp file, fsync, rename) and delete all
    but the newest ``keep`` checkpoints in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_rest = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    for name, gen in generators.items():
        tensors[f"generator.{name}"] = gen.get_state()
    meta = {
        "advex.checkpoint": _FORMAT,
        "epoch": str(epoch),
        "config": json.dumps(config, sort_keys=True),
        "objective": json.dumps(objective, sort_keys=True),
        "optimizer": json.dumps(opt_rest),
        "history": json.dumps(history),
    }
    path = path_for(folder, epoch)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in sorted(folder.glob(f"{_PREFIX}*.safetensors"))[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def latest(folder: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint in ``folder``, or None when there is none."""
    found = sorted(Path(folder).glob(f"{_PREFIX}*.safetensors"))
    return found[-1] if found else None


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by ``save`` (tensors on the CPU)."""
    model: dict[str, Tensor] = {}
    opt: dict[str, Tensor] = {}
    gens: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("advex.checkpoint") != _FORMAT:
            raise ValueError(f"{path}: not an advex training checkpoint (format {_FORMAT})")
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            group, name = key.split(".", 1)
            target = {"model": model, "optimizer": opt, "generator": gens}[group]
            target[name if group != "optimizer" else key] = f.get_tensor(key)
    return Checkpoint(
        epoch=int(meta["epoch"]),
        model=model,
        optimizer=_join_optimizer(opt, json.loads(meta["optimizer"])),
        generators=gens,
        config=json.loads(meta["config"]),
        objective=json.loads(meta["objective"]),
        history=json.loads(meta["history"]),
    )
