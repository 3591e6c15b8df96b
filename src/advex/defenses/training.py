"""One training loop for every objective: standard, adversarial, regularized, distilled.

``train(model, data, objective, ...)`` runs mini-batch training with the objective's loss
(``advex.defenses.objectives``), and around it everything a long run needs:

* seeded: data order, augmentation and the objective's random draws come from three explicit
  ``torch.Generator``s seeded from ``seed``; on a given machine a rerun is bit-identical;
* ε ramp: the budget grows linearly from 0 to the objective's ε over the first
  ``eps_ramp_epochs`` epochs (per step), which keeps small networks from stalling at chance;
* learning-rate schedule: step drops (×0.1 at the start of each epoch in ``lr_drops``) or a
  per-step cosine decay;
* augmentation: random shifts of up to ``shift`` pixels (zero fill), per sample;
* validation after each epoch on held-out data: clean accuracy and, for adversarial
  objectives (or with ``val_eps``), robust accuracy under ``advex.attacks.PGD`` (re-checked);
* checkpoints after each epoch (``advex.defenses.checkpoint``: model, optimizer, generators,
  history) and ``resume=True`` to continue after an interruption with identical results;
* a progress bar (tqdm) and one log line per epoch; ``history.jsonl`` in ``out``;
* on the CPU, convolutional models train in channels-last memory layout (same function,
  faster convolutions and pooling); the returned model is back in the default layout.

The returned ``TrainResult`` holds the model (eval mode) and the per-epoch history; with ``out``
the final weights go to ``out/model.safetensors`` with the settings and history as metadata.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from advex import data as data_module
from advex.attacks import checks
from advex.defenses import checkpoint
from advex.defenses.objectives import Objective
from advex.model import Classifier
from advex.threat import ThreatModel

__all__ = ["TrainConfig", "TrainResult", "shift_batch", "train"]

Data = tuple[Tensor, Tensor] | str


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (everything but the model, data and objective).

    Attributes:
        epochs: passes over the training data.
        batch_size: samples per update (the last batch of an epoch may be smaller).
        optimizer: "adam" or "sgd" (with ``momentum`` and Nesterov off).
        lr: the initial learning rate.
        lr_drops: epochs (0-based) at whose start the learning rate drops tenfold.
        schedule: "step" (``lr_drops``) or "cosine" (per step, to 0 at the end).
        momentum, weight_decay: optimizer settings (momentum: SGD only).
        eps_ramp_epochs: epochs over which ε grows linearly from 0 (per step).
        shift: random shift augmentation in pixels (0: none).
        seed: seeds initialization-independent randomness (order, augmentation, attacks).
        bounds: the input range.
        val_n: validation samples (the first ``val_n`` of the validation data); 0 skips it.
        val_steps: PGD steps of the robust validation.
        val_eps: budget of the robust validation; None: the objective's ε (none for
            non-adversarial objectives).
        channels_last: train convolutional models in channels-last layout; None: on the CPU.
    """

    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_drops: tuple[int, ...] = ()
    schedule: str = "step"
    momentum: float = 0.9
    weight_decay: float = 0.0
    eps_ramp_epochs: int = 0
    shift: int = 0
    seed: int = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    val_n: int = 1000
    val_steps: int = 20
    val_eps: float | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        checks.positive_int("epochs", self.epochs)
        checks.positive_int("batch_size", self.batch_size)
        checks.positive("lr", self.lr)
        checks.non_negative("weight_decay", self.weight_decay)
        checks.non_negative_int("eps_ramp_epochs", self.eps_ramp_epochs)
        checks.non_negative_int("shift", self.shift)
        checks.non_negative_int("val_n", self.val_n)
        checks.positive_int("val_steps", self.val_steps)
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule: expected 'step' or 'cosine', got {self.schedule!r}")
        if any(not 0 <= d < self.epochs for d in self.lr_drops):
            raise ValueError(
                f"lr_drops: epochs must lie in [0, {self.epochs}), got {self.lr_drops}"
            )
        if self.val_eps is not None:
            checks.positive("val_eps", self.val_eps)
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds: expected lo < hi, got {self.bounds}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists)."""
        out = asdict(self)
        out["lr_drops"] = list(self.lr_drops)
        out["bounds"] = list(self.bounds)
        return out

    def learning_rate(self, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
        """The learning rate of one step (0-based epoch and step)."""
        if self.schedule == "cosine":
            t = (epoch * steps_per_epoch + step_in_epoch) / (self.epochs * steps_per_epoch)
            return 0.5 * self.lr * (1 + math.cos(math.pi * t))
        return self.lr * 0.1 ** sum(epoch >= d for d in self.lr_drops)

    def budget(self, eps: float, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
        """The ramped budget of one step: eps · min(1, (global step + 1) / ramp steps)."""
        if self.eps_ramp_epochs == 0:
            return eps
        ramp = self.eps_ramp_epochs * steps_per_epoch
        return eps * min(1.0, (epoch * steps_per_epoch + step_in_epoch + 1) / ramp)


@dataclass
class TrainResult:
    """A finished (or resumed and finished) run: the model in eval mode, one history row per
    epoch (loss, train accuracy, validation accuracies, seconds), and where files went."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: Path | None = None

    @property
    def train_seconds(self) -> float:
        """Seconds spent in training steps (validation and checkpoints excluded)."""
        return float(sum(row["train_seconds"] for row in self.history))


def shift_batch(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by an independent random (dy, dx) ∈ [−s, s]², filling with zeros."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    oy = torch.randint(0, 2 * s + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * s + 1, (b,), generator=generator).to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (oy[:, None] + ar_h)[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + ar_w)[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def _data(spec: Data, split: str, what: str) -> tuple[Tensor, Tensor]:
    if isinstance(spec, str):
        return data_module.load(spec, split=split)
    if not (isinstance(spec, tuple | list) and len(spec) == 2):
        raise TypeError(f"{what}: expected a dataset spec string or an (x, y) pair of tensors")
    x, y = spec
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what}: x and y must be tensors")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: x has {x.shape[0]} samples but y has {y.shape[0]}")
    if not x.is_floating_point():
        raise ValueError(f"{what}: x must be a floating-point tensor, got {x.dtype}")
    if y.ndim != 1 or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: y must be a 1-D integer tensor of class labels")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: x contains NaN or infinite values")
    return x, y.long()


def _check_range(x: Tensor, bounds: tuple[float, float], what: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
        raise ValueError(f"{what}: values span [{lo:.4g}, {hi:.4g}], outside bounds {bounds}")


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: it has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _validate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | None,
    objective: Objective,
    config: TrainConfig,
) -> dict[str, float]:
    from advex.attacks import PGD

    clf = Classifier(model, bounds=config.bounds, channels_last=False)
    out = {"val_clean": float((clf.predict(x, batch_size=500) == y).float().mean())}
    if eps is not None:
        threat = ThreatModel(objective.norm, eps, bounds=config.bounds)
        attack = PGD(threat, steps=config.val_steps, seed=config.seed, batch_size=500)
        out["val_robust"] = attack(clf, x, y).robust_accuracy
    return out


def _config_mismatch(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(now))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}"
        for k in keys
        if saved.get(k) != now.get(k)
    ]


def train(
    model: nn.Module,
    data: Data,
    objective: Objective,
    *,
    config: TrainConfig | None = None,
    val_data: Data | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    keep: int = 2,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``objective``; see the module docstring.

    Args:
        model: the network (its parameters are updated in place).
        data: an ``advex.data`` spec (its train split is used) or a pair (x, y).
        objective: an ``advex.defenses.objectives`` instance.
        config: the run's settings (``TrainConfig()`` when None).
        val_data: validation data; a spec's test split when ``data`` is a spec and this is
            None; pass ``()``-free tuples of tensors for your own. No validation when the
            config's ``val_n`` is 0.
        out: folder for checkpoints (``epoch-NNNN.safetensors``, the newest ``keep``),
            ``history.jsonl`` and the final ``model.safetensors``; None writes nothing.
        resume: continue from the newest checkpoint in ``out`` (its settings must match).
        progress: show a tqdm bar (default: when stderr is a terminal).
        log: called with one line per epoch (default: print to stderr).
        metadata: extra string metadata for ``model.safetensors``.
    """
    config = config or TrainConfig()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(objective, Objective):
        raise TypeError(f"objective: expected an advex Objective, got {type(objective).__name__}")
    if resume and out is None:
        raise ValueError("resume: needs the `out` folder that holds the checkpoints")
    emit = log or (lambda line: print(line, file=sys.stderr, flush=True))
    show = sys.stderr.isatty() if progress is None else progress

    x_train, y_train = _data(data, "train", "data")
    _check_range(x_train, config.bounds, "data")
    if val_data is None and isinstance(data, str):
        val_data = data
    x_val = y_val = None
    if val_data is not None and config.val_n > 0:
        x_val, y_val = _data(val_data, "test", "val_data")
        x_val, y_val = x_val[: config.val_n], y_val[: config.val_n]
    val_eps = (
        config.val_eps
        if config.val_eps is not None
        else (objective.eps if objective.adversarial else None)
    )

    device = next(iter(model.parameters())).device
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    layout = config.channels_last if config.channels_last is not None else device.type == "cpu"
    channels_last = bool(layout and conv and x_train.ndim == 4)

    opt = _optimizer(model, config)
    gens = {
        name: torch.Generator().manual_seed(config.seed * 3 + i)
        for i, name in enumerate(("order", "augment", "objective"))
    }
    settings = config.to_dict()
    params = objective.params()
    history: list[dict[str, Any]] = []
    start_epoch = 0
    folder = Path(out) if out is not None else None
    if resume and folder is not None and (found := checkpoint.latest(folder)) is not None:
        ckpt = checkpoint.load(found)
        saved = dict(ckpt.config)
        if config.schedule == "step" and saved.get("epochs", 0) <= config.epochs:
            saved["epochs"] = config.epochs  # a step schedule may be extended by more epochs
        diff = _config_mismatch(saved, settings) + _config_mismatch(ckpt.objective, params)
        if diff:
            raise ValueError(f"resume: {found} was made with other settings: " + "; ".join(diff))
        model.load_state_dict(ckpt.model)
        opt.load_state_dict(ckpt.optimizer)
        for name, gen in gens.items():
            gen.set_state(ckpt.generators[name])
        history = ckpt.history
        start_epoch = ckpt.epoch
        emit(f"resumed from {found} (epoch {ckpt.epoch}/{config.epochs})")
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    n = len(y_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            order = torch.randperm(n, generator=gens["order"])
            total = correct = 0.0
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not show,
                leave=False,
                file=sys.stderr,
            )
            began = time.perf_counter()
            eps = lr = 0.0
            for i in bar:
                idx = order[i * config.batch_size : (i + 1) * config.batch_size]
                x = shift_batch(x_train[idx], config.shift, gens["augment"]).to(device)
                y = y_train[idx].to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = config.learning_rate(epoch, i, steps_per_epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                eps = config.budget(objective.eps, epoch, i, steps_per_epoch)
                step = objective.loss(
                    model,
                    x,
                    y,
                    eps=eps,
                    generator=gens["objective"],
                    bounds=config.bounds,
                    step=epoch * steps_per_epoch + i,
                )
                if not bool(torch.isfinite(step.loss)):
                    raise FloatingPointError(
                        f"loss is {float(step.loss)} at epoch {epoch + 1}, step {i + 1}: lower "
                        "the learning rate or check the data"
                    )
                opt.zero_grad(set_to_none=True)
                step.loss.backward()
                opt.step()
                total += float(step.loss.detach()) * len(y)
                correct += float((step.logits.detach().argmax(1) == y).sum())
            train_seconds = time.perf_counter() - began
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": lr,
                "eps": eps if objective.adversarial else None,
                "loss": total / n,
                "train_acc": correct / n,
                "train_seconds": train_seconds,
            }
            if x_val is not None and y_val is not None:
                began = time.perf_counter()
                row.update(_validate(model, x_val, y_val, val_eps, objective, config))
                row["val_seconds"] = time.perf_counter() - began
            history.append(row)
            emit(_line(row, config.epochs))
            if folder is not None:
                checkpoint.save(
                    folder,
                    epoch + 1,
                    model,
                    opt,
                    gens,
                    config=settings,
                    objective=params,
                    history=history,
                    keep=keep,
                )
                with open(folder / "history.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()
    weights = None
    if folder is not None:
        weights = folder / "model.safetensors"
        meta = {
            "advex.objective": json.dumps(params, sort_keys=True),
            "advex.train_config": json.dumps(settings, sort_keys=True),
            "advex.history": json.dumps(history),
            **(metadata or {}),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights), metadata=meta)
    return TrainResult(model=model, history=history, weights=weights)


def _line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.1e}"]
    if row.get("eps") is not None:
        parts.append(f"eps {row['eps']:.3g}")
    parts += [f"loss {row['loss']:.4f}", f"train acc {row['train_acc']:.4f}"]
    if "val_clean" in row:
        parts.append(f"val clean {row['val_clean']:.4f}")
    if "val_robust" in row:
        parts.append(f"val PGD {row['val_robust']:.4f}")
    parts.append(f"{row['train_seconds']:.1f}s")
    return " | ".join(parts)
