"""Train the zoo's models and write their weights and cards.

    python -m advex.zoo.train --model mnist_cnn          # one model
    python -m advex.zoo.train --all                      # every model in advex.zoo.MODELS
    python -m advex.zoo.train --all --output /tmp/zoo    # elsewhere: <output>/weights, /cards

Everything is seeded (the global generator for initialization, explicit ``torch.Generator``
objects for data order, augmentation and the attack's random starts) and runs on the CPU with
2 threads and deterministic algorithms, so a rerun on the same machine and library versions
reproduces the weights bit for bit.

Standard training minimizes the cross-entropy with Adam on the dataset's train split, with
random shifts of up to ``shift`` pixels (zero padding) as augmentation. PGD adversarial
training (Madry et al., ICLR 2018, arXiv:1706.06083) minimizes instead

    E_(x,y) max_{‖δ‖∞ ≤ ε, 0 ≤ x+δ ≤ 1} L(f(x + δ), y),

the inner maximum approximated by ``advex.attacks.PGD`` (random start, ``pgd_steps`` steps of
size 2.5·ε/steps, the strongest iterate kept) on the model in eval mode. Differences from the
paper: ε ramps linearly from 0 to its final value over the first ``ramp_epochs`` epochs (a
small network trained at ε = 0.3 from the start can stall at chance), 10 PGD steps instead
of 40, Adam with a step-wise learning-rate decay, and shift augmentation for the 4,000
training images.

After training the script measures clean test accuracy (and, for the adversarially trained
model, robust accuracy under PGD-40 and stronger checks), times one forward+backward pass of
a batch of 250 and writes ``weights/<name>.safetensors`` (metadata included) and
``cards/<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import advex
from advex import ThreatModel, data
from advex.attacks import FGSM, PGD
from advex.defenses.training import shift_batch
from advex.model import Classifier
from advex.zoo import MODELS
from advex.zoo.architectures import ARCHITECTURES, build

__all__ = [
    "RECIPES",
    "Recipe",
    "accuracy",
    "main",
    "robust_attack",
    "robust_evaluation",
    "shift_batch",
    "shipped_command",
    "time_forward_backward",
    "train",
    "train_and_save",
    "write_card",
]

_ZOO_DIR = Path(__file__).resolve().parent
_THREADS = 2


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is trained.

    Attributes:
        epochs: passes over the train split.
        batch_size: samples per update.
        lr: Adam's learning rate; multiplied by 0.1 at each epoch in ``lr_drops``.
        lr_drops: epochs (0-based) at whose start the learning rate drops tenfold.
        shift: maximal random shift in pixels (augmentation); 0 for none.
        adv_eps: L∞ budget of PGD adversarial training; None for standard training.
        ramp_epochs: epochs over which the budget ramps linearly from 0 to ``adv_eps``.
        pgd_steps: PGD steps of the inner maximization.
        seed: the training seed.
        command: for models trained by ``advex train``: its arguments (without ``--out``);
            the fields above then only describe the run for the card, the command decides.
        ensemble: also evaluate under advex's AutoAttack-grade ensemble (minutes per model).
    """

    epochs: int
    batch_size: int
    lr: float
    lr_drops: tuple[int, ...] = ()
    shift: int = 0
    adv_eps: float | None = None
    ramp_epochs: int = 0
    pgd_steps: int = 10
    seed: int = 0
    command: tuple[str, ...] = ()
    ensemble: bool = False


def _args(command: str) -> tuple[str, ...]:
    """The words of an ``advex train`` argument string (no quoting needed in the recipes)."""
    return tuple(command.split())


RECIPES: dict[str, Recipe] = {
    "mnist_cnn": Recipe(epochs=20, batch_size=50, lr=1e-3, lr_drops=(15,), shift=2),
    "mnist_mlp": Recipe(epochs=30, batch_size=50, lr=1e-3, lr_drops=(22,), shift=2),
    "mnist_cnn_pgd": Recipe(
        epochs=60,
        batch_size=100,
        lr=1e-3,
        lr_drops=(45, 55),
        shift=2,
        adv_eps=0.3,
        ramp_epochs=15,
        pgd_steps=10,
    ),
    "digits_mlp": Recipe(epochs=200, batch_size=32, lr=1e-3, lr_drops=(150,)),
    "mnist_wide_pgd": Recipe(
        epochs=40,
        batch_size=100,
        lr=1e-3,
        lr_drops=(30, 36),
        shift=2,
        adv_eps=0.3,
        ramp_epochs=10,
        command=_args(
            "--arch mnist_cnn_wide --objective pgd --eps 0.3 --steps 10 --epochs 40 "
            "--lr-drops 30,36 --eps-ramp-epochs 10 --shift 2 --val-n 500 --val-steps 10 --threads 1"
        ),
        ensemble=True,
    ),
    "mnist_cnn_trades": Recipe(
        epochs=60,
        batch_size=100,
        lr=1e-3,
        lr_drops=(45, 55),
        shift=2,
        adv_eps=0.3,
        ramp_epochs=15,
        command=_args(
            "--arch mnist_cnn --objective trades --eps 0.3 --beta 6 --steps 10 --epochs 60 "
            "--lr-drops 45,55 --eps-ramp-epochs 15 --shift 2 --val-n 500 --val-steps 10 --threads 1"
        ),
    ),
}


def robust_attack(eps: float) -> PGD:
    """The attack whose robust accuracy the metadata records: PGD-40, one start, seed 0."""
    return PGD(ThreatModel("linf", eps), steps=40, restarts=1, seed=0)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode, no gradients) on (x, y)."""
    clf = model if isinstance(model, Classifier) else Classifier(model)
    return float((clf.predict(x, batch_size=batch_size) == y).float().mean())


def train(
    name: str,
    recipe: Recipe,
    *,
    log: Callable[[str], None] = print,
    from_run: Path | None = None,
) -> tuple[nn.Module, float]:
    """Train model ``name`` with ``recipe``; returns the module (eval mode) and the seconds."""
    entry = MODELS[name]
    if recipe.command:
        return train_with_cli(name, recipe.command, log=log, from_run=from_run)
    torch.manual_seed(recipe.seed)
    model = build(entry.architecture)
    x_train, y_train = data.load(entry.dataset, split="train")
    order_gen = torch.Generator().manual_seed(recipe.seed + 1)
    aug_gen = torch.Generator().manual_seed(recipe.seed + 2)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    batches = math.ceil(len(y_train) / recipe.batch_size)
    clf = Classifier(model, num_classes=model.num_classes)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        lr = recipe.lr * 0.1 ** sum(epoch >= d for d in recipe.lr_drops)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(len(y_train), generator=order_gen)
        total, correct, seen = 0.0, 0, 0
        for i in range(batches):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            x = shift_batch(x_train[idx], recipe.shift, aug_gen)
            y = y_train[idx]
            if recipe.adv_eps is not None:
                progress = (epoch * batches + i + 1) / max(1, recipe.ramp_epochs * batches)
                eps = recipe.adv_eps * min(1.0, progress)
                attack = PGD(
                    ThreatModel("linf", eps),
                    steps=recipe.pgd_steps,
                    step_size=2.5 * eps / recipe.pgd_steps,
                    early_stop=False,
                    seed=recipe.seed * 1_000_000 + epoch * batches + i,
                )
                x = attack(clf, x, y).x_adv
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        log(
            f"{name} epoch {epoch + 1}/{recipe.epochs} lr {lr:.0e} loss {total / seen:.4f} "
            f"train acc {correct / seen:.4f} ({time.perf_counter() - start:.0f}s)"
        )
    seconds = time.perf_counter() - start
    return model.eval(), seconds


def _without_out(command: str) -> list[str]:
    words = shlex.split(command)
    if "--out" in words:
        i = words.index("--out")
        del words[i : i + 2]
    return words


def train_with_cli(
    name: str,
    args: Sequence[str],
    *,
    log: Callable[[str], None] = print,
    from_run: Path | None = None,
) -> tuple[nn.Module, float]:
    """Run ``advex train ARGS --out TMP`` (the same code path as the shell command) and load
    its weights; returns the module (eval mode) and the training seconds it recorded.

    ``from_run``: the ``--out`` folder of a finished ``advex train`` run with exactly these
    arguments (checked against the command its weights record) to take instead of training."""
    import tempfile

    from advex.cli import app

    entry = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        if from_run is None:
            app(["train", *args, "--out", tmp], standalone_mode=False)
        weights = (from_run or Path(tmp)) / "model.safetensors"
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
            history = json.loads(meta["advex.history"])
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if from_run is not None and _without_out(meta.get("advex.command", "")) != [
        "advex",
        "train",
        *args,
    ]:
        raise ValueError(
            f"{weights}: made by {meta.get('advex.command')!r}, not by the recipe's "
            f"advex train {shlex.join(args)}"
        )
    model = build(entry.architecture)
    model.load_state_dict(state)
    seconds = float(sum(row["train_seconds"] for row in history))
    last = history[-1]
    log(f"{name}: advex train done, {seconds:.0f}s; last epoch {json.dumps(last)}")
    return model.eval(), seconds


def time_forward_backward(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 250, repeats: int = 30
) -> dict[str, float]:
    """Milliseconds of one forward+backward pass of a batch (eval mode, current threads).

    Keys ``"input"`` (gradient with respect to the input, parameters frozen: an attack's
    step) and ``"params"`` (gradient with respect to the parameters: a training step) hold
    the median of ``repeats`` passes after 5 warm-up passes; ``"input_best"`` and
    ``"params_best"`` the fastest pass, which is what a shared machine distorts least.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch_size, *input_shape), generator=gen)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    model.eval()
    out: dict[str, float] = {}
    for mode in ("input", "params"):
        for p in model.parameters():
            p.requires_grad_(mode == "params")
        times = []
        for r in range(repeats + 5):
            t0 = time.perf_counter()
            xx = x.clone().requires_grad_(mode == "input")
            loss = F.cross_entropy(model(xx), y)
            if mode == "input":
                torch.autograd.grad(loss, xx)
            else:
                model.zero_grad(set_to_none=True)
                loss.backward()
            if r >= 5:
                times.append(time.perf_counter() - t0)
        out[mode] = 1000 * statistics.median(times)
        out[f"{mode}_best"] = 1000 * min(times)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    return out


def robust_evaluation(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, ensemble: bool = False
) -> list[tuple[str, float]]:
    """Robust accuracies under the recorded attack (first) and stronger checks; with
    ``ensemble`` also advex's AutoAttack-grade ensemble (``advex.attacks.standard``)."""
    from advex.attacks import standard

    clf = Classifier(model, num_classes=10)
    threat = ThreatModel("linf", eps)
    attacks: list[Any] = [
        robust_attack(eps),
        FGSM(threat),
        PGD(threat, steps=100, restarts=5, seed=1),
    ]
    if ensemble:
        attacks.append(standard(threat, seed=0))
    out = []
    for attack in attacks:
        result = attack(clf, x, y)
        out.append((repr(attack), float(result.robust_accuracy)))
    return out


def _card_text(
    name: str,
    recipe: Recipe,
    meta: dict[str, str],
    timing: dict[str, float],
    robust: list[tuple[str, float]],
) -> str:
    entry = MODELS[name]
    arch = ARCHITECTURES[entry.architecture]
    n_params = sum(p.numel() for p in arch().parameters())
    split = data.DATASETS[entry.dataset]
    drops = ""
    if recipe.lr_drops:
        word = "epoch" if len(recipe.lr_drops) == 1 else "epochs"
        starts = ", ".join(str(d + 1) for d in recipe.lr_drops)
        drops = f" (x0.1 at the start of {word} {starts})"
    augment = (
        f"random shifts of up to {recipe.shift} px (zero fill)"
        if recipe.shift
        else "no augmentation"
    )
    lines = [
        f"# Model card: `{name}`",
        "",
        entry.description[0].upper() + entry.description[1:] + ".",
        "",
        "```python",
        "import advex.zoo",
        "",
        f'model = advex.zoo.load("{name}")  # advex.Classifier, eval mode, bounds (0, 1)',
        "```",
        "",
        "## Data",
        "",
        f'`advex.data.load("{entry.dataset}")`: {split}. Trained on the train split, '
        "measured on the test split. Inputs are (B, "
        + ", ".join(str(d) for d in arch.input_shape)
        + ") in [0, 1], no normalization; outputs are 10 logits.",
        "",
        "## Architecture",
        "",
        f"`{entry.architecture}` (`advex.zoo.architectures.{arch.__name__}`), "
        f"{n_params:,} parameters:",
        "",
        "```",
        str(arch()),
        "```",
        "",
        "## Training",
        "",
        f"- command: `{meta['training_command']}`",
        f"- seed: {recipe.seed}; cross-entropy, Adam, lr {recipe.lr:g}{drops}, "
        f"batch {recipe.batch_size}, {recipe.epochs} epochs, {augment}",
    ]
    if recipe.command:
        args = list(recipe.command)
        objective = args[args.index("--objective") + 1]
        if objective == "pgd":
            what = "PGD adversarial training (Madry et al. 2018): cross-entropy at the PGD point"
        elif objective == "trades":
            beta = args[args.index("--beta") + 1] if "--beta" in args else "6"
            what = (
                f"TRADES (Zhang et al. 2019), beta {beta}: CE(f(x), y) + beta * KL(p(x) || "
                "p(x')), x' maximizing the KL"
            )
        else:
            what = objective
        threads = args[args.index("--threads") + 1] if "--threads" in args else "all"
        lines[-1] = (
            f"- seed: {recipe.seed}; Adam, lr {recipe.lr:g}{drops}, batch {recipe.batch_size}, "
            f"{recipe.epochs} epochs, {augment}"
        )
        lines.append(
            f"- objective `{objective}` of `advex.defenses`: {what}; Linf eps={recipe.adv_eps:g} "
            f"ramped linearly from 0 over the first {recipe.ramp_epochs} epochs; inner "
            "maximization: 10 signed-gradient steps of 2.5*eps/10 from a random start (TRADES: "
            "from x + 0.001*N(0, I)), model in eval mode, last iterate"
        )
        lines.append(
            f"- trained with `advex train` (`--threads {threads}`); its per-epoch log "
            "(clean and PGD-10 accuracy on 500 test images) is in the weights' metadata"
        )
    elif recipe.adv_eps is not None:
        lines.append(
            f"- PGD adversarial training: Linf eps={recipe.adv_eps:g}, eps ramped linearly from "
            f"0 over the first {recipe.ramp_epochs} epochs, {recipe.pgd_steps} steps of size "
            f"2.5*eps/{recipe.pgd_steps}, random start, strongest iterate kept "
            "(`advex.attacks.PGD`, `early_stop=False`), trained on the adversarial batch only"
        )
    lines += [
        f"- training time: {float(meta['train_seconds']):.0f} s wall on "
        f"{_threads(meta.get('train_threads', _THREADS))} "
        f"({meta['machine']}, torch {meta['torch_version']}; the machine was shared, so wall "
        "times vary by tens of percent), evaluation excluded",
        "",
        "## Results (test split)",
        "",
        f"- clean accuracy: **{100 * float(meta['clean_accuracy']):.1f}%**",
    ]
    for i, (attack, acc) in enumerate(robust):
        tag = " (recorded in the metadata)" if i == 0 else ""
        lines.append(f"- robust accuracy under `{attack}`: **{100 * acc:.1f}%**{tag}")
    lines += [
        "",
        "## Speed",
        "",
        f"One forward+backward pass of a batch of 250 in eval mode on {_THREADS} CPU threads "
        f"({meta['machine']}), median of 30 after 5 warm-up passes (fastest pass in brackets; "
        "the machine was shared):",
        "",
        f"- gradient with respect to the input (an attack step): {timing['input']:.1f} ms "
        f"({timing['input_best']:.1f} ms)",
        f"- gradient with respect to the parameters (a training step): {timing['params']:.1f} ms "
        f"({timing['params_best']:.1f} ms)",
        "",
        "## Limits",
        "",
        "Trained on a few thousand images: a fixture for testing attacks, defenses and "
        "certification, not a benchmark model. Accuracies are on the bundled test split only.",
        "",
    ]
    return "\n".join(lines)


def train_and_save(
    name: str,
    output: Path,
    *,
    recipe: Recipe | None = None,
    log: Callable[[str], None] = print,
    from_run: Path | None = None,
) -> None:
    """Train ``name``, evaluate it and write ``output/weights/<name>.safetensors`` and its card.

    ``from_run``: for recipes that are ``advex train`` commands, the output folder of that
    command already run (its recorded command is checked); only the evaluation runs then.

    ``recipe`` overrides ``RECIPES[name]`` (tests use short ones); the metadata then records
    the call instead of the command line.
    """
    recipe = RECIPES[name] if recipe is None else recipe
    entry = MODELS[name]
    model, seconds = train(name, recipe, log=log, from_run=from_run)
    x_test, y_test = data.load(entry.dataset, split="test")
    clean = accuracy(model, x_test, y_test)
    log(f"{name}: clean test accuracy {clean:.4f}, trained in {seconds:.0f}s")
    robust: list[tuple[str, float]] = []
    if recipe.adv_eps is not None:
        robust = robust_evaluation(model, x_test, y_test, recipe.adv_eps, ensemble=recipe.ensemble)
        for attack, acc in robust:
            log(f"{name}: robust accuracy {acc:.4f} under {attack}")
    if recipe == RECIPES[name]:
        command = shipped_command(name)
    else:
        command = f"advex.zoo.train.train_and_save({name!r}, OUTPUT, recipe={recipe!r})"
    meta = {
        "name": name,
        "architecture": entry.architecture,
        "dataset": entry.dataset,
        "training_command": command,
        "seed": str(recipe.seed),
        "clean_accuracy": f"{clean:.4f}",
        "train_seconds": f"{seconds:.1f}",
        "advex_version": advex.__version__,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()} {platform.system()}",
    }
    if recipe.command and "--threads" in recipe.command:
        meta["train_threads"] = recipe.command[list(recipe.command).index("--threads") + 1]
    if robust:
        meta["robust_accuracy"] = f"{robust[0][1]:.4f}"
        meta["robust_attack"] = robust[0][0]
        meta["robust_checks"] = json.dumps([[a, round(acc, 4)] for a, acc in robust])
    (output / "weights").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    path = output / "weights" / f"{name}.safetensors"
    save_file(state, str(path), metadata=meta)
    log(f"{name}: wrote {path}")
    write_card(name, output, recipe=recipe, log=log)


def _threads(n: object) -> str:
    return "1 CPU thread" if str(n) == "1" else f"{n} CPU threads"


def shipped_command(name: str) -> str:
    """The command that made the shipped weights of ``name`` (as the card and metadata say)."""
    recipe = RECIPES[name]
    if recipe.command:
        return shlex.join(["advex", "train", *recipe.command, "--out", f"runs/{name}"])
    return f"python -m advex.zoo.train --model {name}"


def write_card(
    name: str,
    output: Path,
    *,
    recipe: Recipe | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Write ``output/cards/<name>.md`` from the weights' metadata, timing the architecture anew.

    Without ``recipe`` the weights must come from the shipped recipe (their metadata records
    its command), since the card describes the recipe.
    """
    path = output / "weights" / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta: dict[str, str] = f.metadata() or {}
    if recipe is None:
        recipe = RECIPES[name]
        if meta.get("training_command") != shipped_command(name):
            raise ValueError(
                f"{path}: trained by {meta.get('training_command')!r}, not the shipped recipe; "
                "retrain it before writing its card"
            )
    entry = MODELS[name]
    robust = [(str(a), float(acc)) for a, acc in json.loads(meta.get("robust_checks", "[]"))]
    arch = ARCHITECTURES[entry.architecture]
    timing = time_forward_backward(build(entry.architecture), arch.input_shape)
    log(
        f"{name}: forward+backward batch 250: median {timing['input']:.1f} ms, "
        f"best {timing['input_best']:.1f} ms (input gradient)"
    )
    (output / "cards").mkdir(parents=True, exist_ok=True)
    card = output / "cards" / f"{name}.md"
    card.write_text(_card_text(name, recipe, meta, timing, robust), encoding="utf-8")
    log(f"{name}: wrote {card}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m advex.zoo.train``)."""
    parser = argparse.ArgumentParser(
        prog="python -m advex.zoo.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", action="append", choices=list(MODELS), help="model to train")
    group.add_argument("--all", action="store_true", help="train every zoo model")
    parser.add_argument(
        "--output",
        type=Path,
        default=_ZOO_DIR,
        help="directory receiving weights/ and cards/ (default: the installed advex/zoo)",
    )
    parser.add_argument(
        "--cards-only",
        action="store_true",
        help="do not train: rewrite the cards from the existing weights' metadata and time "
        "the forward+backward pass again",
    )
    parser.add_argument(
        "--from-run",
        type=Path,
        default=None,
        help="for a model trained by `advex train`: that command's finished --out folder "
        "(its recorded command must be the recipe's); evaluates and writes weights and card",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(_THREADS)
    torch.use_deterministic_algorithms(True)
    names = list(MODELS) if args.all else args.model
    for name in names:
        if args.cards_only:
            write_card(name, args.output)
        else:
            train_and_save(name, args.output, from_run=args.from_run)


if __name__ == "__main__":
    main()
