"""``advex train``: the training loop of ``advex.defenses`` from the command line.

    advex train --arch mnist_cnn --objective pgd --eps 0.3 --epochs 60 --out runs/pgd_at
    advex train --arch mnist_cnn --objective trades --eps 0.3 --beta 6 --out runs/trades
    advex train ... --out runs/pgd_at --resume          # continue after an interruption

Writes ``OUT/epoch-NNNN.safetensors`` checkpoints, ``OUT/history.jsonl`` and the final
``OUT/model.safetensors`` (loadable with ``advex.zoo.load_file(path, ARCH)`` or
``advex evaluate --model OUT/model.safetensors --arch ARCH``).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

__all__ = ["train"]


def _epochs(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        from advex.cli import _fail

        _fail(f"{what}: expected a comma list of epochs, e.g. 45,55; got {text!r}")


def _objective(
    name: str,
    *,
    eps: float | None,
    norm: str,
    steps: int,
    step_size: float | None,
    beta: float,
    alpha: float | None,
    weight: float | None,
    temperature: float,
    teacher: str | None,
    static: list[str],
    arch: str | None,
    device: str,
) -> Any:
    """Build the objective named ``name`` from the options it uses."""
    from advex.cli import _fail, _load_models, _split_list
    from advex.defenses import objectives as obj

    if name not in obj.OBJECTIVES:
        _fail(f"--objective: expected one of {', '.join(obj.OBJECTIVES)}, got {name!r}")
    cls = obj.OBJECTIVES[name]
    if cls.adversarial and eps is None:
        _fail(f"--eps: the {name} objective needs a budget, e.g. --eps 0.3")
    archs = [arch] if arch else []
    if name == "standard":
        return obj.Standard(temperature=temperature)
    if name == "gradient_penalty":
        return obj.GradientPenalty(weight=1.0 if weight is None else weight)
    if name == "distillation":
        if teacher is None:
            _fail("--teacher: distillation needs the teacher (zoo:NAME or a weights file)")
        models, _ = _load_models([teacher], archs, device)
        return obj.Distillation(teacher=next(iter(models.values())), temperature=temperature)
    assert eps is not None
    if name == "fgsm":
        return obj.FGSMMix(eps=eps, alpha=0.5 if alpha is None else alpha, norm=norm)
    if name == "fast":
        return obj.FastFGSM(eps=eps, step_size=step_size, norm=norm)
    if name == "pgd":
        return obj.PGDAT(eps=eps, steps=steps, step_size=step_size, norm=norm)
    if name == "trades":
        return obj.TRADES(eps=eps, beta=beta, steps=steps, step_size=step_size, norm=norm)
    if name == "alp":
        return obj.ALP(
            eps=eps,
            alpha=0.5 if alpha is None else alpha,
            weight=0.5 if weight is None else weight,
            steps=steps,
            step_size=step_size,
            norm=norm,
        )
    specs = _split_list(static)
    if not specs:
        _fail("--static: ensemble adversarial training needs pre-trained models (zoo:NAME,...)")
    models, _ = _load_models(specs, archs, device)
    return obj.EnsembleAT(
        eps=eps, static=list(models.values()), alpha=0.5 if alpha is None else alpha, norm=norm
    )


def train(
    arch: Annotated[str, typer.Option(help="Architecture to train (advex zoo list).")],
    out: Annotated[
        Path, typer.Option(help="Folder for checkpoints, history.jsonl and model.safetensors.")
    ],
    data: Annotated[str, typer.Option(help="Bundled dataset name or .npz file.")] = "mnist5k",
    objective: Annotated[
        str,
        typer.Option(
            help="standard, fgsm, fast, pgd, trades, alp, ensemble, gradient_penalty "
            "or distillation."
        ),
    ] = "standard",
    eps: Annotated[float | None, typer.Option(help="Budget of adversarial objectives.")] = None,
    norm: Annotated[str, typer.Option(help="linf, l2 or l1.")] = "linf",
    steps: Annotated[int, typer.Option(min=1, help="Inner attack steps (pgd, trades, alp).")] = 10,
    step_size: Annotated[
        float | None, typer.Option(help="Inner step size [default: 2.5*eps/steps].")
    ] = None,
    beta: Annotated[float, typer.Option(help="TRADES trade-off weight.")] = 6.0,
    alpha: Annotated[
        float | None, typer.Option(help="Clean-loss weight (fgsm, alp, ensemble) [0.5].")
    ] = None,
    weight: Annotated[
        float | None, typer.Option(help="Pairing weight (alp) or gradient penalty weight.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (distillation).")] = 1.0,
    teacher: Annotated[
        str | None, typer.Option(help="Distillation teacher: zoo:NAME or weights (same --arch).")
    ] = None,
    static: Annotated[
        list[str] | None, typer.Option(help="Static models of ensemble training (repeatable).")
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="Start from these weights instead of a fresh init.")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 100,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = "adam",
    lr: Annotated[float, typer.Option(help="Initial learning rate.")] = 1e-3,
    lr_drops: Annotated[
        str | None, typer.Option(help="Epochs (0-based) where lr drops x0.1, e.g. 45,55.")
    ] = None,
    schedule: Annotated[str, typer.Option(help="step or cosine.")] = "step",
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    eps_ramp_epochs: Annotated[
        int, typer.Option(min=0, help="Epochs over which eps ramps up from 0.")
    ] = 0,
    shift: Annotated[int, typer.Option(min=0, help="Random shift augmentation (pixels).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of initialization and every generator.")] = 0,
    val_n: Annotated[int, typer.Option(min=0, help="Validation samples (test split).")] = 1000,
    val_steps: Annotated[int, typer.Option(min=1, help="PGD steps of the validation.")] = 20,
    val_eps: Annotated[
        float | None, typer.Option(help="Validation budget [default: --eps].")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train a model with one objective (standard, adversarial, TRADES, ALP, ensemble, gradient
    penalty, distillation); checkpoints each epoch; --resume continues a stopped run."""
    from advex.cli import _USER_ERRORS, _device, _fail, _message
    from advex.defenses.training import TrainConfig
    from advex.defenses.training import train as run_training
    from advex.zoo import load_file
    from advex.zoo.architectures import ARCHITECTURES, build

    if arch not in ARCHITECTURES:
        _fail(f"--arch: unknown {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    dev = _device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if out.exists() and not resume and any(out.glob("epoch-*.safetensors")):
        _fail(
            f"--out {out}: holds checkpoints of an earlier run; add --resume or pick a new folder"
        )
    try:
        config = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            lr_drops=_epochs(lr_drops, "--lr-drops"),
            schedule=schedule,
            weight_decay=weight_decay,
            eps_ramp_epochs=eps_ramp_epochs,
            shift=shift,
            seed=seed,
            val_n=val_n,
            val_steps=val_steps,
            val_eps=val_eps,
        )
        goal = _objective(
            objective,
            eps=eps,
            norm=norm,
            steps=steps,
            step_size=step_size,
            beta=beta,
            alpha=alpha,
            weight=weight,
            temperature=temperature,
            teacher=teacher,
            static=static or [],
            arch=arch,
            device=dev,
        )
        torch.manual_seed(seed)
        model = build(arch)
        if init is not None:
            model.load_state_dict(load_file(init, arch).module.state_dict())
        model = model.to(dev)
        command = shlex.join(["advex", *sys.argv[1:]])
        result = run_training(
            model,
            data,
            goal,
            config=config,
            out=out,
            resume=resume,
            metadata={"advex.architecture": arch, "advex.command": command, "advex.data": data},
        )
    except _USER_ERRORS as err:
        _fail(_message(err))
    last = result.history[-1] if result.history else {}
    summary = [f"{result.train_seconds:.0f} s of training"]
    if "val_clean" in last:
        summary.append(f"val clean {last['val_clean']:.4f}")
    if "val_robust" in last:
        summary.append(f"val PGD-{val_steps} {last['val_robust']:.4f}")
    typer.echo(f"{result.weights} ({', '.join(summary)})")
