"""The ``advex`` command: a thin layer over the Python API.

    advex evaluate   models × attack grid → OUT/store.sqlite, results.json, report.html
    advex report     the HTML report of a run, regenerated from its store
    advex export     a run's per-sample table as CSV or JSON
    advex attack     one attack on one model → a one-line summary (and an .npz with --out)
    advex certify    certified accuracy per radius (bounds, MILP, smoothing); VNN-LIB properties
    advex train      train a model: standard, adversarial (FGSM, PGD, TRADES, ALP, ensemble), ...
    advex zoo list   the shipped models
    advex attacks list   the attack catalogue

Bad settings end with a one-line ``Error: ...`` on stderr and exit code 2, before any attack
runs; the work itself is done by ``advex.evaluate``, ``advex.attacks``, ``advex.data`` and
``advex.zoo``.
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import torch
import typer
from torch import Tensor

from advex.attacks import ATTACKS, Attack
from advex.evaluate.plan import (
    DEFAULT_ATTACKS,
    PlanEntry,
    accepts,
    default_plan,
    grid_plan,
    parse_attacks,
    parse_eps,
)
from advex.evaluate.run import DEFAULT_BATCH_SIZE, DEFAULT_EOT_SAMPLES
from advex.model import Classifier
from advex.threat import Norm, ThreatModel, parse_norm

# Options shared by several commands.
SeedOption = Annotated[int, typer.Option(help="Seed of the attacks' random generators.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, help="Samples per attack batch.")]
DeviceOption = Annotated[str, typer.Option(help="cpu or cuda.")]

app = typer.Typer(
    name="advex",
    help="advex: attack, defend, evaluate and certify PyTorch classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
zoo_app = typer.Typer(help="The model zoo: small models shipped with advex.", no_args_is_help=True)
attacks_app = typer.Typer(help="The attack catalogue.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.add_typer(attacks_app, name="attacks")

DEFAULT_MODELS = ("zoo:mnist_cnn", "zoo:mnist_cnn_pgd")
DEFAULT_DATA = "mnist5k"
DEFAULT_N = 1000

#: Errors that mean "the user asked for something that cannot be done" (not a bug).
_USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, IsADirectoryError)


def _fail(message: str) -> NoReturn:
    """Print a one-line error to stderr and exit with code 2 (usage error)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=2)


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _version(value: bool) -> None:
    if value:
        import advex

        typer.echo(f"advex {advex.__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """advex: attack, defend, evaluate and certify PyTorch classifiers."""


# ----- shared helpers --------------------------------------------------------------------------


def _split_list(values: list[str] | None) -> list[str]:
    """Flatten repeatable options that may also hold comma lists."""
    return [p.strip() for v in values or [] for p in v.split(",") if p.strip()]


def _model_name(spec: str) -> str:
    if spec.startswith("zoo:"):
        return spec[4:]
    return Path(spec).stem or spec


def _zoo_names() -> list[str]:
    from advex import zoo

    return list(getattr(zoo, "MODELS", {}))


def _resolve(spec: str) -> str:
    """``zoo:NAME`` for zoo models (a bare zoo name is accepted), else the file path."""
    if spec.startswith("zoo:") or Path(spec).exists():
        return spec
    if spec in _zoo_names():
        return f"zoo:{spec}"
    _fail(
        f"--model {spec}: no such weights file and no such zoo model "
        f"(zoo models: {', '.join(_zoo_names())})"
    )


def _load_models(
    specs: list[str], archs: list[str], device: str
) -> tuple[dict[str, Classifier], dict[str, dict[str, Any]]]:
    """Load ``zoo:NAME`` specs and weight files (with ``--arch``); returns models and sources."""
    from advex import zoo

    specs = [_resolve(s) for s in specs]
    files = [s for s in specs if not s.startswith("zoo:")]
    if files and not archs:
        _fail(f"--model {files[0]}: a weights file needs its architecture: add --arch NAME")
    if files and len(archs) not in (1, len(files)):
        _fail(f"--arch: expected 1 or {len(files)} architectures (one per file), got {len(archs)}")
    models: dict[str, Classifier] = {}
    sources: dict[str, dict[str, Any]] = {}
    file_index = 0
    for spec in specs:
        info: dict[str, Any] = {"spec": spec}
        try:
            if spec.startswith("zoo:"):
                clf = zoo.load(spec, device=device)
            else:
                arch = archs[file_index] if len(archs) > 1 else archs[0]
                file_index += 1
                clf = zoo.load_file(spec, arch, device=device)
                info["architecture"] = arch
        except _USER_ERRORS as err:
            _fail(f"--model {spec}: {_message(err)}")
        name, k = _model_name(spec), 2
        while name in models:
            name, k = f"{_model_name(spec)}#{k}", k + 1
        models[name] = clf
        sources[name] = info
    return models, sources


def _zoo_dataset(specs: list[str]) -> str | None:
    """The bundled dataset shared by all the zoo models in ``specs`` (None if unclear)."""
    from advex import data, zoo

    if not specs or not all(s.startswith("zoo:") for s in specs):
        return None
    try:
        cards = {c.name: c for c in zoo.list_models()}
    except _USER_ERRORS:
        return None
    found = {getattr(cards.get(s[4:]), "dataset", None) for s in specs}
    if len(found) == 1:
        (name,) = found
        if isinstance(name, str) and name in data.DATASETS:
            return name
    return None


def _load_data(spec: str, split: str, n: int | None) -> tuple[Tensor, Tensor]:
    """The first ``n`` samples (``DEFAULT_N`` when None; all, with a note, if fewer exist)."""
    from advex import data

    try:
        x, y = data.load(spec, split=split)
    except _USER_ERRORS as err:
        _fail(f"--data {spec}: {_message(err)}")
    if n is not None and n > len(y):
        typer.echo(f"note: --n {n} but {spec} ({split}) has {len(y)} samples; using all", err=True)
    count = DEFAULT_N if n is None else n
    return x[:count], y[:count]


def _norm(text: str) -> Norm:
    try:
        return parse_norm(text)
    except ValueError as err:
        _fail(f"--{_message(err)}")


def _device(text: str) -> str:
    try:
        dev = torch.device(text)
    except RuntimeError:
        _fail(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail("--device: CUDA was asked for but is not available")
    return str(dev)


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.4g}"


def _fmt_eps(eps: float | None) -> str:
    """A budget for the results table: 'min' for a minimum-norm run (no eps)."""
    return "min" if eps is None else _fmt(eps)


# ----- advex evaluate --------------------------------------------------------------------------


def build_plan(
    attacks: str | None, norm: str | None, eps: str | None, steps: int | None
) -> list[PlanEntry]:
    """The plan the flags ask for (default plan when none of attacks/norm/eps is given).

    Raises:
        ValueError: with a message naming the flag.
    """
    if attacks is None and norm is None and eps is None:
        return default_plan(steps=steps)
    try:
        names = parse_attacks(attacks) if attacks is not None else list(DEFAULT_ATTACKS)
    except ValueError as err:
        raise ValueError(f"--{_message(err)}") from None
    try:
        canonical = parse_norm(norm) if norm is not None else "linf"
    except ValueError as err:
        raise ValueError(f"--{_message(err)}") from None
    try:
        budgets = parse_eps(eps) if eps is not None else None
    except ValueError as err:
        raise ValueError(f"--{_message(err)}") from None
    for name in names:
        supported = ATTACKS[name].norms
        if canonical not in supported:
            raise ValueError(
                f"--norm: attack {name!r} does not support {canonical} "
                f"(it supports {', '.join(supported)})"
            )
    try:
        return grid_plan(names, canonical, budgets, steps=steps)
    except ValueError as err:
        msg = _message(err)
        raise ValueError(msg if msg.startswith("--") else f"--{msg}") from None


@app.command()
def evaluate(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model: zoo:NAME or a weights file (with --arch). Repeat or comma-separate. "
            "[default: zoo:mnist_cnn, zoo:mnist_cnn_pgd]",
            show_default=False,
        ),
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option(help="Architecture of the weight files given to --model (one, or one each)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset: mnist5k, digits, npz:PATH or folder:PATH. "
            "[default: the zoo models' dataset, else mnist5k]",
            show_default=False,
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a bundled dataset: test, train or all.")] = (
        "test"
    ),
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Evaluate the first N samples. [default: 1000]"),
    ] = None,
    attacks: Annotated[
        str | None,
        typer.Option(
            help="Comma list of attacks (see `advex attacks list`). With --norm/--eps the plan "
            "is attacks × norm × eps; minimum-norm attacks run once without eps unless --eps is "
            "given; 'standard' (AutoAttack's recipe) and 'fast' run an ensemble plus sanity "
            "checks. [default plan: fgsm,pgd at linf 0.05,0.1,0.2,0.3, pgd at l2 1,2,3, and "
            "deepfool l2 minimum norm]",
            show_default=False,
        ),
    ] = None,
    norm: Annotated[
        str | None, typer.Option(help="Norm of the grid: linf, l2, l1 or l0. [default: linf]")
    ] = None,
    eps: Annotated[
        str | None,
        typer.Option(help="Comma list of budgets, e.g. 0.1,0.3 or 8/255. [default: per norm]"),
    ] = None,
    levels: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Value grid of the inputs (256: 8-bit images); adversarial "
            "inputs are rounded onto it. The data must lie on it.",
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Steps of the iterative attacks. [default: 40]")
    ] = None,
    seed: SeedOption = 0,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    device: DeviceOption = "cpu",
    examples: Annotated[
        int, typer.Option(min=0, help="Example images per model in the report.")
    ] = 8,
    out: Annotated[
        Path, typer.Option(help="Output folder: store.sqlite, results.json, report.html.")
    ] = Path("runs/evaluate"),
    clever: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also estimate CLEVER scores on the first N samples per model and Lp norm "
            "(an estimate, never a certificate; about a second per sample and class).",
        ),
    ] = 0,
    certify: Annotated[
        str | None,
        typer.Option(
            help="Also certify each sample: a certified lower bound on its minimal adversarial "
            "distance beside the best attack's (mip: exact MILP; ibp, crown, lp, progressive: "
            "bounds). Needs the verify extra for mip.",
        ),
    ] = None,
    certify_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds per sample for --certify mip.")
    ] = 10.0,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the interrupted run in this folder with its stored settings; "
            "the work already stored is skipped.",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Start over in an --out folder that already holds a run.")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr. [default: when stderr is a terminal]",
            show_default=False,
        ),
    ] = None,
    defense: Annotated[
        list[str] | None,
        typer.Option(
            "--defense",
            help="An inference-time defense put in front of every model: NAME or "
            "NAME:KEY=VALUE,... (jpeg:quality=75, bitdepth:bits=4, noise:sigma=0.1, resizepad, "
            "blur:sigma=1, median:kernel_size=3, translate:max_shift=2, rotate:max_degrees=15, "
            "flip). Repeat for several, applied in the order given.",
            show_default=False,
        ),
    ] = None,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive/--no-adaptive",
            help="Attack models with randomized or non-differentiable defenses adaptively "
            "(BPDA and EOT, Athalye et al. 2018); --no-adaptive gives the naive numbers.",
        ),
    ] = True,
    eot_samples: Annotated[
        int,
        typer.Option(min=1, help="Draws averaged per forward pass of a randomized model (EOT)."),
    ] = DEFAULT_EOT_SAMPLES,
) -> None:
    """Evaluate models against a grid of attacks; write OUT/store.sqlite, OUT/results.json and
    OUT/report.html. Every batch is stored as soon as it is done: an interrupted run continues
    with --resume OUT. Models with randomized or non-differentiable advex defenses (--defense)
    are attacked adaptively (BPDA, EOT) unless --no-adaptive."""
    from advex.evaluate import run_evaluation, write_report, write_results
    from advex.evaluate.run import check_setup
    from advex.evaluate.store import STORE_FILE, Store, StoreError

    started = time.perf_counter()
    settings: dict[str, Any] = {
        "model": model,
        "arch": arch,
        "data": data,
        "split": split,
        "n": n,
        "attacks": attacks,
        "norm": norm,
        "eps": eps,
        "levels": levels,
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "clever": clever,
        "certify": certify,
        "certify_timeout": certify_timeout,
        "defense": defense,
        "adaptive": adaptive,
        "eot_samples": eot_samples,
    }
    if resume is not None:
        settings = _resumed_settings(resume, settings)
        out = resume
    elif (out / STORE_FILE).exists():
        if not overwrite:
            _fail(
                f"--out {out}: already holds a run; continue it with --resume {out}, or pass "
                "--overwrite to start over"
            )
        _remove_store(out)
    try:
        plan = build_plan(settings["attacks"], settings["norm"], settings["eps"], settings["steps"])
    except ValueError as err:
        _fail(_message(err))
    from advex.evaluate.certified import CERTIFY_CHOICES, certify_evaluation

    if settings.get("certify") not in (None, *CERTIFY_CHOICES):
        _fail(f"--certify: expected one of {', '.join(CERTIFY_CHOICES)}, got {certify!r}")
    dev = _device(device)
    defenses = _defense_specs(settings.get("defense"))
    specs = [_resolve(s) for s in _split_list(settings["model"]) or DEFAULT_MODELS]
    data_spec = settings["data"] or _zoo_dataset(specs) or DEFAULT_DATA
    split, levels = settings["split"], settings["levels"]
    seed, batch_size = settings["seed"], settings["batch_size"]
    models, sources = _load_models(specs, _split_list(settings["arch"]), dev)
    models = _defended(models, defenses, sources)
    x, y = _load_data(data_spec, split, settings["n"])
    try:
        check_setup(models, x, y, plan, levels=levels)
    except ValueError as err:
        msg = _message(err)
        _fail(f"--{msg}" if msg.startswith("levels:") else msg)

    typer.echo(
        f"{'resuming' if resume is not None else 'evaluating'} {', '.join(models)} on "
        f"{len(y)} samples of {data_spec} ({split}): {len(plan)} attack settings",
        err=True,
    )
    if defenses:
        typer.echo(f"defenses in front of every model: {', '.join(map(str, defenses))}", err=True)
    config = {
        "models": specs,
        "arch": _split_list(settings["arch"]) or None,
        "data": data_spec,
        "split": split,
        "n": len(y),
        "attacks": settings["attacks"],
        "norm": settings["norm"],
        "eps": settings["eps"],
        "levels": levels,
        "steps": settings["steps"],
        "seed": seed,
        "batch_size": batch_size,
        "device": dev,
        "out": str(out),
        "defenses": [str(d) for d in defenses],
        "adaptive": settings.get("adaptive", True),
        "eot_samples": settings.get("eot_samples", DEFAULT_EOT_SAMPLES),
    }
    metadata = {
        "command": shlex.join(["advex", *sys.argv[1:]]),
        "config": config,
        "data": data_spec,
        "split": split,
        "device": dev,
        "sources": sources,
    }
    try:
        with Store(out) as store:
            if resume is None:
                store.set_meta(cli=settings, metadata=metadata)
            result = run_evaluation(
                models,
                x,
                y,
                plan,
                levels=levels,
                seed=seed,
                batch_size=batch_size,
                progress=progress,
                store=store,
                clever_samples=settings["clever"],
                adaptive=settings.get("adaptive", True),
                eot_samples=settings.get("eot_samples", DEFAULT_EOT_SAMPLES),
            )
            certified = None
            if settings.get("certify"):
                typer.echo(f"certifying by {settings['certify']}", err=True)
                try:
                    certified = certify_evaluation(
                        result,
                        models,
                        settings["certify"],
                        store=store,
                        time_limit=float(settings.get("certify_timeout") or 10.0),
                        seed=seed,
                    )
                except ImportError as err:
                    _fail(f"--certify: {err} (install the extra: pip install 'advex[verify]')")
            stored_meta = store.meta()
    except StoreError as err:
        _fail(_message(err))
    metadata = stored_meta.get("metadata", metadata)
    if certified:
        from advex.evaluate.certified import certified_rows

        metadata = {**metadata, "certified": certified_rows(result, certified)}
    results_path = write_results(result, out / "results.json", metadata)
    report_path = write_report(
        result,
        out / "report.html",
        title="advex evaluation",
        metadata=_report_metadata(stored_meta, len(y)),
        examples=examples,
        models=models,
        transfer=_report_transfer(result),
        clever=result.clever or None,
        certified=certified or None,
    )
    _print_rows(result)
    _print_adaptive(result)
    _print_flags(result)
    typer.echo(f"wrote {results_path} and {report_path} ({time.perf_counter() - started:.1f} s)")


def _defense_specs(values: list[str] | None) -> list[Any]:
    """The parsed --defense specs (``advex.defenses.registry``), in the order given."""
    from advex.defenses.registry import parse_defense

    out = []
    for value in values or []:
        try:
            out.append(parse_defense(value))
        except ValueError as err:
            _fail(f"--defense {_message(err)}")
    return out


def _defended(
    models: dict[str, Classifier], defenses: list[Any], sources: dict[str, dict[str, Any]]
) -> dict[str, Classifier]:
    """Each model behind its own new instances of ``defenses`` (none: the models as given)."""
    if not defenses:
        return models
    from advex.defenses.base import defend

    for name in models:
        sources[name]["defenses"] = [str(d) for d in defenses]
    return {name: defend(clf, *(d.build() for d in defenses)) for name, clf in models.items()}


def _resumed_settings(folder: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The stored settings of the run in ``folder``; an option given now must agree."""
    from advex.evaluate.store import Store, StoreError

    try:
        with Store(folder, readonly=True) as store:
            stored = store.meta().get("cli")
    except StoreError as err:
        _fail(f"--resume {_message(err)}")
    if not isinstance(stored, dict):
        _fail(f"--resume {folder}: the store holds no settings of an `advex evaluate` run")
    defaults = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()}
    for key, value in given.items():
        if value != defaults.get(key) and value != stored.get(key):
            flag = "--" + key.replace("_", "-")
            _fail(
                f"{flag}: the run in {folder} used {stored.get(key)!r}, not {value!r}; "
                "--resume continues a run with its own settings"
            )
    return {key: stored.get(key, given[key]) for key in given}


def _remove_store(out: Path) -> None:
    """Delete the store of a previous run in ``out`` (``--overwrite``), refusing a live one."""
    from advex.evaluate.store import STORE_FILE, Store, StoreError

    try:
        Store(out).close()  # fails if another process is writing it
    except StoreError as err:
        _fail(f"--overwrite: {_message(err)}")
    for suffix in ("", "-wal", "-shm"):
        (out / (STORE_FILE + suffix)).unlink(missing_ok=True)


def _report_metadata(stored: dict[str, Any], n: int) -> dict[str, Any]:
    """What the report's metadata section shows: the command, the data, the models with their
    weights' hashes, and the environment the run was made in (from the store, not this one)."""
    metadata = stored.get("metadata", {})
    config = metadata.get("config", {})
    hashes = dict((stored.get("config") or {}).get("models", []))
    out = {
        "command": metadata.get("command", ""),
        "data": f"{metadata.get('data', '')} ({metadata.get('split', '')}), first {n} samples",
        "models": ", ".join(config.get("models", [])),
        "weights (sha256, 16 hex)": ", ".join(f"{k}: {v}" for k, v in hashes.items()),
        "device": metadata.get("device", ""),
    }
    if config.get("defenses"):
        out["defenses"] = ", ".join(config["defenses"])
        out["adaptive attacks"] = (
            f"BPDA and EOT ({config.get('eot_samples')} draws)"
            if config.get("adaptive", True)
            else "off (--no-adaptive)"
        )
    out.update(stored.get("environment", {}))
    return out


def _report_transfer(result: Any) -> list[Any]:
    """The transfer matrices the report shows: per norm, the last plan entry at the largest
    budget (in the default plan PGD at the largest ε), so the page stays readable."""
    chosen: dict[str, Any] = {}
    for m in result.transfer_matrices():
        eps = m.threat.eps if m.threat.eps is not None else -1.0
        best = chosen.get(m.threat.norm)
        if best is None or eps >= (best.threat.eps if best.threat.eps is not None else -1.0):
            chosen[m.threat.norm] = m
    return list(chosen.values())


def _stored_models(stored: dict[str, Any]) -> dict[str, Classifier] | None:
    """The run's models loaded again, if every one is still available with the same weights
    (their hash is checked against the store); None otherwise. Only the report's confidences
    use them."""
    from advex.evaluate.store import model_hash

    cli, hashes = stored.get("cli") or {}, dict((stored.get("config") or {}).get("models", []))
    try:
        specs = [_resolve(s) for s in _split_list(cli.get("model")) or DEFAULT_MODELS]
        models, sources = _load_models(specs, _split_list(cli.get("arch")), "cpu")
        models = _defended(models, _defense_specs(cli.get("defense")), sources)
    except (typer.Exit, *_USER_ERRORS):
        return None
    if {k: model_hash(m.module) for k, m in models.items()} != hashes:
        return None
    return models


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="The output folder of an `advex evaluate` run.")],
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write the report. [default: FOLDER/report.html]"),
    ] = None,
    examples: Annotated[
        int, typer.Option(min=0, help="Example images per model in the report.")
    ] = 8,
) -> None:
    """Regenerate the HTML report of a run from its results store alone (the models are
    loaded again only for the example images' confidences, when their weights still match)."""
    from advex.evaluate import write_report
    from advex.evaluate.certified import load_certified
    from advex.evaluate.store import Store, StoreError
    from advex.evaluate.stored import load_evaluation

    try:
        with Store(folder, readonly=True) as store:
            result = load_evaluation(store)
            certified = load_certified(store, result)
            stored = store.meta()
    except StoreError as err:
        _fail(_message(err))
    target = output or folder / "report.html"
    try:
        path = write_report(
            result,
            target,
            title="advex evaluation",
            metadata=_report_metadata(stored, len(result.y)),
            examples=examples,
            models=_stored_models(stored),
            transfer=_report_transfer(result),
            clever=result.clever or None,
            certified=certified or None,
        )
    except OSError as err:
        _fail(f"--output {target}: cannot write the report: {err.strerror or err}")
    typer.echo(f"wrote {path}")


@app.command()
def export(
    folder: Annotated[Path, typer.Argument(help="The output folder of an `advex evaluate` run.")],
    format: Annotated[str, typer.Option("--format", help="json or csv.")] = "csv",
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write the table. [default: FOLDER/samples.FORMAT]"),
    ] = None,
) -> None:
    """Write the per-sample results table of a run (one row per model, attack and sample)."""
    from advex.evaluate.export import write_table
    from advex.evaluate.store import Store, StoreError

    fmt = format.strip().lower()
    if fmt not in ("json", "csv"):
        _fail(f"--format: expected json or csv, got {format!r}")
    target = output or folder / f"samples.{fmt}"
    try:
        with Store(folder, readonly=True) as store:
            count = write_table(store, target, fmt)
    except StoreError as err:
        _fail(_message(err))
    except OSError as err:
        _fail(f"--output {target}: cannot write the table: {err.strerror or err}")
    typer.echo(f"wrote {count} rows to {target}")


def _print_adaptive(result: Any) -> None:
    """One line per model with randomized or non-differentiable defenses: how it was attacked."""
    for name, info in getattr(result, "adaptive", {}).items():
        kinds = [k for k in ("randomized", "nondifferentiable") if info.get(k)]
        what = " and ".join("non-differentiable" if k == "nondifferentiable" else k for k in kinds)
        if info.get("adaptive"):
            how = []
            if info.get("bpda"):
                how.append(f"BPDA ({info['bpda']} backward)")
            if info.get("eot_samples"):
                how.append(f"EOT over {info['eot_samples']} draws")
            typer.echo(f"adaptive: {name} has {what} defenses; attacked with {' and '.join(how)}")
        else:
            typer.echo(
                f"NOT adaptive (--no-adaptive): {name} has {what} defenses; naive attacks: its "
                "robust accuracy may overestimate robustness"
            )


def _print_flags(result: Any) -> None:
    """Every sanity check that fired, on stderr, with what to do."""
    for f in result.flags():
        if f["fired"]:
            typer.echo(
                f"WARNING [{f['model']}: {f['label']}] {f['name']}: {f['message']}. {f['advice']}.",
                err=True,
            )


def _print_rows(result: Any) -> None:
    """A compact text table of the results on stdout."""
    rows = result.rows()
    width = max([len("model"), *(len(r["model"]) for r in rows)])
    aw = max([10, *(len(r["attack"]) for r in rows)])
    typer.echo(
        f"{'model':<{width}}  {'attack':<{aw}} {'norm':<5} {'eps':>7}  {'clean':>6}  "
        f"{'robust':>6}  {'median':>8}  {'seconds':>7}"
    )
    for r in rows:
        typer.echo(
            f"{r['model']:<{width}}  {r['attack']:<{aw}} {r['norm']:<5} "
            f"{_fmt_eps(r['eps']):>7}  {_fmt(r['clean_accuracy'], True):>6}  "
            f"{_fmt(r['robust_accuracy'], True):>6}  {_fmt(r['median_distance']):>8}  "
            f"{r['seconds']:>7.2f}"
        )


# ----- advex attack ----------------------------------------------------------------------------


def _targets(
    clf: Classifier, x: Tensor, y: Tensor, target: str, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Target labels from --target (an int, 'random' or 'least-likely'); drops y == target rows.

    Returns (x, y, target) with the rows kept.
    """
    logits = clf.logits(x).cpu()
    k = int(logits.shape[1])
    mode = target.strip().lower().replace("_", "-")
    if mode == "random":
        gen = torch.Generator().manual_seed(seed)
        t = (y + torch.randint(1, k, y.shape, generator=gen)) % k
    elif mode in ("least-likely", "ll"):
        t = logits.scatter(1, y.unsqueeze(1), float("inf")).argmin(dim=1)
    else:
        try:
            label = int(mode)
        except ValueError:
            _fail(f"--target: expected a class index, 'random' or 'least-likely', got {target!r}")
        if not 0 <= label < k:
            _fail(f"--target: expected a class index in [0, {k - 1}], got {label}")
        t = torch.full_like(y, label)
    keep = t != y
    dropped = int((~keep).sum())
    if dropped:
        typer.echo(f"note: skipped {dropped} samples whose true label is the target", err=True)
        if not bool(keep.any()):
            _fail("--target: every sample already has the target label")
    return x[keep], y[keep], t[keep]


@app.command()
def attack(
    name: Annotated[str, typer.Argument(help="Attack name (see `advex attacks list`).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="zoo:NAME or a weights file (with --arch).")
    ] = "zoo:mnist_cnn",
    arch: Annotated[
        str | None, typer.Option(help="Architecture of a weights file given to --model.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset spec. [default: the zoo model's dataset, else mnist5k]",
            show_default=False,
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a bundled dataset.")] = "test",
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Attack the first N samples. [default: 1000]"),
    ] = None,
    norm: Annotated[str, typer.Option(help="linf, l2, l1 or l0.")] = "linf",
    eps: Annotated[
        str | None, typer.Option(help="Budget, e.g. 0.3 or 8/255 (optional for some attacks).")
    ] = None,
    levels: Annotated[
        int | None, typer.Option(min=2, help="Value grid (256: 8-bit images).")
    ] = None,
    targeted: Annotated[
        bool, typer.Option("--targeted", help="Targeted attack (target: --target, default random).")
    ] = False,
    target: Annotated[
        str | None,
        typer.Option(
            help="Target class for all samples, 'random' or 'least-likely' (implies --targeted)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Steps of an iterative attack.")] = None,
    max_queries: Annotated[
        int | None,
        typer.Option(min=2, help="Query budget per sample of a black-box attack."),
    ] = None,
    seed: SeedOption = 0,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    device: DeviceOption = "cpu",
    out: Annotated[
        Path | None,
        typer.Option(help="Save x, y, x_adv, success, distance, pred (and target) to this .npz."),
    ] = None,
) -> None:
    """Run one attack on one model and print robust accuracy, success rate and median distance."""
    key = name.strip().lower()
    if key not in ATTACKS:
        _fail(f"attack: unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    cls = ATTACKS[key]
    canonical = _norm(norm)
    if canonical not in cls.norms:
        _fail(
            f"--norm: attack {key!r} does not support {canonical} "
            f"(it supports {', '.join(cls.norms)})"
        )
    budget: float | None = None
    if eps is not None:
        try:
            values = parse_eps(eps)
        except ValueError as err:
            _fail(f"--{_message(err)}")
        if len(values) != 1:
            _fail(f"--eps: expected one value, got {eps!r}")
        budget = values[0]
    elif cls.needs_eps:
        _fail(f"--eps: attack {key!r} needs a budget, e.g. --eps 0.3")
    kwargs: dict[str, Any] = {}
    if steps is not None:
        if not accepts(key, "steps"):
            _fail(f"--steps: attack {key!r} takes no steps")
        kwargs["steps"] = steps
    if max_queries is not None:
        if not accepts(key, "max_queries"):
            _fail(f"--max-queries: attack {key!r} takes no query budget")
        kwargs["max_queries"] = max_queries
    is_targeted = targeted or target is not None
    try:
        threat = ThreatModel(norm=canonical, eps=budget, levels=levels, targeted=is_targeted)
        attack_obj = cls(threat, seed=seed, batch_size=batch_size, **kwargs)
    except ValueError as err:
        _fail(_message(err))

    dev = _device(device)
    model = _resolve(model)
    models, _ = _load_models([model], [arch] if arch else [], dev)
    ((label, clf),) = models.items()
    data_spec = data or _zoo_dataset([model]) or DEFAULT_DATA
    x, y = _load_data(data_spec, split, n)
    from advex.evaluate.run import check_grid, check_model

    try:
        check_grid(x, levels)
        check_model(label, clf, x, y)
    except ValueError as err:
        msg = _message(err)
        _fail(f"--{msg}" if msg.startswith("levels:") else msg)
    t: Tensor | None = None
    if is_targeted:
        x, y, t = _targets(clf, x, y, target or "random", seed)
    try:
        result = attack_obj(clf, x, y, t)
    except ValueError as err:
        _fail(_message(err))
    typer.echo(
        f"{key} {threat.describe()} on {label} ({len(result)} samples of {data_spec}): "
        f"clean acc {_fmt(result.clean_accuracy, True)}, "
        f"robust acc {_fmt(result.robust_accuracy, True)}, "
        f"success rate {_fmt(result.success_rate, True)}, "
        f"median distance {_fmt(result.median_distance)}, {result.seconds:.2f} s"
    )
    if out is not None:
        arrays: dict[str, Any] = {
            "x": x.cpu().numpy(),
            "y": y.cpu().numpy(),
            "x_adv": result.x_adv.cpu().numpy(),
            "success": result.success.cpu().numpy(),
            "distance": result.distance.cpu().numpy(),
            "pred": result.pred.cpu().numpy(),
            "clean_pred": result.clean_pred.cpu().numpy(),
            "queries": result.queries.cpu().numpy(),
        }
        if result.target is not None:
            arrays["target"] = result.target.cpu().numpy()
        meta = {"model": model, "data": data_spec, "split": split, **result.to_dict()}
        arrays["meta"] = np.array(json.dumps(meta, default=str))
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **arrays)
        typer.echo(f"wrote {out}")


# ----- advex certify ---------------------------------------------------------------------------


@app.command()
def certify(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="zoo:NAME or a weights file (with --arch).")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="Architecture of a weights file given to --model.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Bundled dataset name, .npz file or image folder. [default: the model's]"
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of a bundled dataset.")] = "test",
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Certify the first N samples. [default: 1000]"),
    ] = None,
    norm: Annotated[str, typer.Option(help="linf, l1 or l2 (smoothing: l2).")] = "linf",
    eps: Annotated[
        str | None, typer.Option(help="Comma list of radii, e.g. 0.01,0.02,0.05.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="ibp, crown, lp, progressive, mip or smoothing.")
    ] = "mip",
    timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds per sample (mip) or per property (--vnnlib).")
    ] = 60.0,
    sigma: Annotated[float, typer.Option(help="Noise level of randomized smoothing.")] = 0.25,
    samples: Annotated[
        int, typer.Option(min=1, help="Noise draws for smoothing's estimate (n).")
    ] = 10_000,
    alpha: Annotated[float, typer.Option(help="Failure probability of smoothing.")] = 0.001,
    seed: SeedOption = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder: samples.jsonl (as samples are decided), certify.json."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    onnx: Annotated[
        Path | None, typer.Option(help="An ONNX network to verify against --vnnlib.")
    ] = None,
    vnnlib: Annotated[
        Path | None, typer.Option(help="A VNN-LIB property file (with --onnx).")
    ] = None,
    result: Annotated[
        Path | None,
        typer.Option(help="Where to write the VNN-COMP result (sat + counterexample, unsat, ...)."),
    ] = None,
) -> None:
    """Certify robustness: certified accuracy per radius with per-sample status (robust, not
    robust, unknown), or answer a VNN-LIB property on an ONNX network (sat/unsat/unknown)."""
    if onnx is not None or vnnlib is not None:
        if onnx is None or vnnlib is None:
            _fail("--onnx and --vnnlib go together")
        _certify_vnnlib(onnx, vnnlib, timeout, result)
        return
    from advex.certify.runner import CERTIFY_METHODS, certify_dataset

    if method not in CERTIFY_METHODS:
        _fail(f"--method: expected one of {', '.join(CERTIFY_METHODS)}, got {method!r}")
    norm_name = _norm(norm)
    if eps is None:
        _fail("--eps: give the radii to certify, e.g. --eps 0.01,0.02")
    try:
        radii = [e for e in parse_eps(eps) if e is not None]
    except ValueError as err:
        _fail(f"--eps: {_message(err)}")
    specs = [_resolve(model or "zoo:mnist_mlp")]
    models, _ = _load_models(specs, _split_list([arch] if arch else None), "cpu")
    ((name, clf),) = models.items()
    data_spec = data or _zoo_dataset(specs) or DEFAULT_DATA
    x, y = _load_data(data_spec, split, n)
    folder = out or Path("runs") / f"certify-{name}-{method}"
    typer.echo(
        f"certifying {name} on {len(y)} samples of {data_spec} ({split}) by {method}, "
        f"{norm_name} radii {', '.join(f'{e:g}' for e in radii)}",
        err=True,
    )
    started = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(radii) * len(y), unit="sample", disable=None, leave=False)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        run = certify_dataset(
            clf,
            x,
            y,
            radii,
            norm=norm_name,
            method=method,
            out=folder,
            resume=resume,
            time_limit=timeout,
            sigma=sigma,
            n=samples,
            alpha=alpha,
            seed=seed,
            progress=progress,
        )
    except ImportError as err:
        _fail(f"--method {method}: {err} (install the extra: pip install 'advex[verify]')")
    except _USER_ERRORS as err:
        msg = _message(err)
        _fail(f"--{msg}" if msg.split(":")[0] in ("out", "eps", "norm", "method") else msg)
    finally:
        bar.close()
    summary = run.summary()
    doc = {
        "command": shlex.join(["advex", *sys.argv[1:]]),
        "model": name,
        "data": data_spec,
        "split": split,
        "method": method,
        "norm": norm_name,
        "timeout": timeout,
        "seconds": time.perf_counter() - started,
        "summary": summary,
    }
    (folder / "certify.json").write_text(json.dumps(doc, indent=2) + "\n")
    typer.echo(
        f"{'eps':>8}  {'clean':>6}  {'certified':>9}  {'attack':>6}  {'decided':>7}  "
        f"{'unknown':>7}  {'disagree':>8}  {'median s':>8}"
    )
    for row in summary:
        typer.echo(
            f"{row['eps']:>8g}  {_fmt(row['clean_accuracy'], True):>6}  "
            f"{_fmt(row['certified_accuracy'], True):>9}  {_fmt(row['attack_accuracy'], True):>6}  "
            f"{_fmt(row['decided'], True):>7}  {row['unknown']:>7}  {row['disagreements']:>8}  "
            f"{row['median_seconds']:>8.3f}"
        )
    typer.echo(f"wrote {folder / 'certify.json'} and {folder / 'samples.jsonl'}")
    if any(row["disagreements"] for row in summary):
        _fail("a certified sample was broken by an attack: a bug in advex; please report it")


def _certify_vnnlib(onnx_path: Path, prop_path: Path, timeout: float, result: Path | None) -> None:
    """Answer a VNN-LIB property on an ONNX network; print sat/unsat/unknown."""
    from advex.certify.vnncomp import solve_vnnlib

    try:
        answer = solve_vnnlib(onnx_path, prop_path, timeout=timeout, result=result)
    except ImportError as err:
        _fail(f"--onnx: {err} (install the extra: pip install 'advex[verify]')")
    except _USER_ERRORS as err:
        _fail(_message(err))
    typer.echo(answer)


# ----- advex zoo list / advex attacks list -----------------------------------------------------


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
    typer.echo(line.rstrip())
    for r in rows:
        typer.echo("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip())


@zoo_app.command("list")
def zoo_list() -> None:
    """List the shipped models: name, dataset, architecture, clean accuracy, description."""
    from advex import zoo

    try:
        cards = zoo.list_models()
    except _USER_ERRORS as err:
        typer.echo(f"Error: {_message(err)}", err=True)
        raise typer.Exit(code=1) from None
    rows = []
    for card in cards:
        acc = getattr(card, "clean_accuracy", None)
        rows.append(
            [
                f"zoo:{card.name}",
                str(card.dataset),
                str(card.architecture),
                _fmt(acc, True) if isinstance(acc, float) else "n/a",
                str(card.description).splitlines()[0] if card.description else "",
            ]
        )
    _print_table(["model", "dataset", "architecture", "clean acc", "description"], rows)


def _targeted_support(cls: type[Attack]) -> str:
    """'yes', 'no' or 'only' (an attack that rejects an untargeted threat model)."""
    if cls.requires_targeted:
        return "only"
    return "yes" if cls.supports_targeted else "no"


@attacks_app.command("list")
def attacks_list() -> None:
    """List the attacks: name, supported norms, whether eps is needed, targeted, description."""
    rows = []
    for key, cls in ATTACKS.items():
        doc = inspect.getdoc(cls) or ""
        rows.append(
            [
                key,
                ",".join(cls.norms),
                "required" if cls.needs_eps else "optional",
                _targeted_support(cls),
                doc.splitlines()[0] if doc else "",
            ]
        )
    _print_table(["attack", "norms", "eps", "targeted", "description"], rows)


# `advex train` lives in its own module (the training options are many); registered here.
from advex.cli_train import train as _train_command  # noqa: E402

app.command("train")(_train_command)
