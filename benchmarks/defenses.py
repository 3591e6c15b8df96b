"""Every advex defense: clean accuracy, naive-attack and adaptive-attack robust accuracy.

One row per defense, on the first ``--n`` mnist5k test images, L∞:

* trained defenses (ε = 0.3): the zoo's adversarially trained CNNs (``mnist_wide_pgd``,
  ``mnist_cnn_trades``; ``mnist_cnn_pgd`` is in docs/reliable.md) and, trained here with
  ``advex.defenses.train`` on the 4,000 training images (``--epochs``, seed 0, shifts of
  2 px): FGSM mixture, fast FGSM, ALP, ensemble adversarial training (static: zoo
  ``mnist_cnn``, ``mnist_mlp``), input-gradient penalty and defensive distillation (teacher
  and student at T = 100).
  Naive attack: PGD-40 with cross-entropy (the attack the papers report). Adaptive: advex's
  AutoAttack-grade ensemble ``standard`` (APGD-CE, APGD-T on the DLR loss, FAB-T, Square),
  whose margin-type losses and black-box member see through masked gradients.
* inference-time defenses (ε = 0.1) in front of the zoo's standard ``mnist_cnn``: JPEG,
  bit-depth reduction, median filter, Gaussian blur, Gaussian noise, random resize-and-pad,
  random translation, random rotation, and random self-ensemble (noise layers, fine-tuned
  here with the noise in place, 10 draws averaged). Naive attack: PGD-40 on the deployed
  model as it is (gradients of whatever the defense does, one random draw per pass).
  Adaptive: ``Adaptive(standard)``: BPDA for the non-differentiable steps and EOT over 10
  draws for the randomized ones, every point re-decided on the deployed model.
* detectors (ε = 0.3, zoo ``mnist_cnn``): MagNet (reformer + reconstruction detectors) and
  the kernel-density + Bayesian-uncertainty detector, at a 5% clean false-positive rate;
  "robust" counts a sample correct clean and, after the attack, still correct or rejected.
  Naive: PGD-40 on the classifier; adaptive: per sample the worst case of that and PGD-100 on
  the margin minus a hinge on the detector's score (Carlini & Wagner 2017), early stop off.

Rows are appended to ``OUT/rows.jsonl`` as they finish, and models trained here are kept in
``OUT/models``; a rerun with the same ``--out`` skips what is done (``--fresh`` starts over).

Run: ``python benchmarks/defenses.py --threads 2`` (``make bench-defenses``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advex import ThreatModel, data, zoo
from advex.attacks import PGD, fast, standard
from advex.defenses import (
    ALP,
    Distillation,
    EnsembleAT,
    FastFGSM,
    FGSMMix,
    GradientPenalty,
    Standard,
    TrainConfig,
    defend,
    is_randomized,
    train,
)
from advex.defenses.adaptive import Adaptive
from advex.defenses.detect import KDBUDetector, detector_aware_loss, evaluate_detector
from advex.defenses.purify import MagNet, ReconstructionDetector, Reformer, train_autoencoder
from advex.defenses.randomized import SelfEnsemble, random_self_ensemble
from advex.defenses.transforms import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    MedianFilter,
    RandomRotate,
    RandomTranslate,
    ResizePad,
)
from advex.model import Classifier
from advex.zoo.architectures import build

Row = dict[str, Any]


class Bench:
    """The shared state of one run: data, output folder, settings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.x, self.y = data.load("mnist5k", split="test")
        self.x, self.y = self.x[: args.n], self.y[: args.n]
        self.x_train, self.y_train = data.load("mnist5k", split="train")

    def trained(self, name: str, objective: Any, arch: str = "mnist_cnn", **over: Any) -> nn.Module:
        """A model trained here with ``objective`` (reused from OUT/models when present)."""
        folder = self.out / "models" / name
        torch.manual_seed(0)
        model = build(arch)
        config = TrainConfig(
            epochs=over.pop("epochs", self.args.epochs),
            batch_size=100,
            lr=1e-3,
            shift=2,
            val_n=0,
            eps_ramp_epochs=over.pop("eps_ramp_epochs", 0),
            lr_drops=over.pop("lr_drops", ()),
        )
        if (folder / "model.safetensors").exists():
            return zoo.load_file(folder / "model.safetensors", arch).module.eval()
        result = train(
            model,
            (self.x_train, self.y_train),
            objective,
            config=config,
            out=folder,
            resume=True,
            progress=False,
            log=lambda s: print("   ", s, flush=True),
        )
        return result.model

    def trained_module(self, name: str, model: nn.Module) -> nn.Module:
        """Fine-tune ``model`` (standard objective, 3 epochs, lr 1e-4), kept in OUT/models."""
        folder = self.out / "models" / name
        path = folder / "model.safetensors"
        if path.exists():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(path)))
            return model.eval()
        config = TrainConfig(epochs=3, batch_size=100, lr=1e-4, shift=2, val_n=0)
        return train(
            model,
            (self.x_train, self.y_train),
            Standard(),
            config=config,
            out=folder,
            resume=True,
            progress=False,
            log=lambda s: print("   ", s, flush=True),
        ).model


def _pgd(eps: float) -> PGD:
    return PGD(ThreatModel("linf", eps), steps=40, seed=0, batch_size=500)


def trained_row(bench: Bench, name: str, model: nn.Module, note: str) -> Row:
    eps = 0.3
    clf = model if isinstance(model, Classifier) else Classifier(model)
    naive = _pgd(eps)(clf, bench.x, bench.y)
    strong = standard(ThreatModel("linf", eps), seed=0)(clf, bench.x, bench.y)
    worst = (naive.success | strong.success) | ~naive.clean_correct
    return {
        "defense": name,
        "kind": "trained",
        "eps": eps,
        "clean": naive.clean_accuracy,
        "naive": naive.robust_accuracy,
        "adaptive": strong.robust_accuracy,
        "worst": float((~worst).float().mean()),
        "naive_attack": "PGD-40 (CE)",
        "adaptive_attack": "standard ensemble",
        "note": note,
    }


def zoo_row(bench: Bench, name: str, card: str) -> Row:
    """A zoo model's row: the numbers its weights' metadata records on all 1000 test images
    (``python -m advex.zoo.train`` measured them with the same attacks: PGD-40 and, for the
    models trained by ``advex train``, the standard ensemble); else measured here."""
    from safetensors import safe_open

    with safe_open(str(zoo.weights_path(card)), framework="pt") as f:
        meta = f.metadata() or {}
    checks = dict(json.loads(meta.get("robust_checks", "[]")))
    strong = [acc for attack, acc in checks.items() if attack.startswith("Standard(")]
    if not strong:
        return trained_row(bench, name, zoo.load(card), f"zoo {card}")
    return {
        "defense": name,
        "kind": "trained",
        "eps": 0.3,
        "clean": float(meta["clean_accuracy"]),
        "naive": float(meta["robust_accuracy"]),
        "adaptive": strong[0],
        "naive_attack": meta["robust_attack"],
        "adaptive_attack": "standard ensemble",
        "note": f"zoo {card}; 1000 test images, from its card (python -m advex.zoo.train)",
    }


def inference_row(
    bench: Bench, name: str, deployed: Classifier, note: str, eot_samples: int = 10
) -> Row:
    """A defense in front of the model at L∞ 0.1: PGD-40 on the deployed model, then the
    ensemble through ``Adaptive`` (BPDA; EOT over ``eot_samples`` draws if randomized)."""
    eps = 0.1
    naive = _pgd(eps)(deployed, bench.x, bench.y)
    threat = ThreatModel("linf", eps)
    # AutoAttack's own recipe for randomized defenses is its "rand" version: the APGD members
    # with EOT (Square's 5000 queries times the draws would dominate the run).
    ensemble = fast(threat, seed=0) if is_randomized(deployed) else standard(threat, seed=0)
    strong = Adaptive(ensemble, eot_samples=eot_samples)(deployed, bench.x, bench.y)
    broken = naive.success | strong.success | ~naive.clean_correct
    return {
        "defense": name,
        "kind": "inference",
        "eps": eps,
        "clean": naive.clean_accuracy,
        "naive": naive.robust_accuracy,
        "adaptive": strong.robust_accuracy,
        "worst": float((~broken).float().mean()),
        "naive_attack": "PGD-40 (CE) on the deployed model",
        "adaptive_attack": f"Adaptive({ensemble.name}): BPDA, EOT-{eot_samples} where randomized",
        "note": note,
    }


def detector_row(bench: Bench, name: str, model: Classifier, detector: Any, note: str) -> Row:
    eps = 0.3
    threat = ThreatModel("linf", eps)
    loss = detector_aware_loss(detector, model=model)
    adaptive = PGD(threat, steps=100, loss=loss, early_stop=False, seed=0, batch_size=500)
    report = evaluate_detector(
        model, detector, _pgd(eps), bench.x, bench.y, adaptive_attack=adaptive
    )
    loss.close()
    return {
        "defense": name,
        "kind": "detector",
        "eps": eps,
        "clean": report.clean_accuracy,
        "naive": report.naive.robust_accuracy_with_detection,
        "adaptive": report.robust_accuracy_with_detection,
        "naive_attack": "PGD-40 (CE), detector ignored",
        "adaptive_attack": "worst case of that and PGD-100 on margin - detector hinge",
        "note": f"{note}; clean FPR {report.fpr:.3f}, naive AUC {report.naive.auc:.3f}",
    }


def rows(bench: Bench) -> list[tuple[str, Callable[[], Row]]]:
    """Every row: (name, how to compute it)."""
    eps = 0.3
    base = zoo.load("mnist_cnn")
    out: list[tuple[str, Callable[[], Row]]] = [
        ("none", lambda: trained_row(bench, "none", base, "zoo mnist_cnn, standard training")),
    ]
    for name, card in (
        ("PGD-AT (wide)", "mnist_wide_pgd"),
        ("TRADES", "mnist_cnn_trades"),
    ):
        out.append((name, lambda n=name, c=card: zoo_row(bench, n, c)))
    ramp = {"eps_ramp_epochs": max(1, bench.args.epochs // 4)}
    objectives: list[tuple[str, Callable[[], Any], dict[str, Any]]] = [
        ("FGSM mixture", lambda: FGSMMix(eps=eps), ramp),
        ("fast FGSM", lambda: FastFGSM(eps=eps), ramp),
        ("ALP", lambda: ALP(eps=eps), ramp),
        (
            "ensemble AT",
            lambda: EnsembleAT(
                eps=eps, static=[zoo.load("mnist_cnn").module, zoo.load("mnist_mlp").module]
            ),
            ramp,
        ),
        ("gradient penalty", lambda: GradientPenalty(weight=10.0), {}),
    ]
    for name, make, over in objectives:

        def row(name: str = name, make: Callable[[], Any] = make, over: dict = over) -> Row:
            model = bench.trained(name.replace(" ", "_"), make(), **dict(over))
            return trained_row(bench, name, model, f"trained here, {bench.args.epochs} epochs")

        out.append((name, row))

    def distilled() -> Row:
        teacher = bench.trained("teacher_T100", Standard(temperature=100.0))
        student = bench.trained("distilled_T100", Distillation(teacher=teacher, temperature=100.0))
        return trained_row(bench, "distillation", student, "T = 100, trained here")

    out.append(("distillation", distilled))

    transforms = [
        ("JPEG q75", lambda: JPEG(quality=75), "BPDA (cubic-rounding surrogate)"),
        ("bit depth 1", lambda: BitDepth(bits=1), "BPDA (identity)"),
        ("bit depth 2", lambda: BitDepth(bits=2), "BPDA (identity)"),
        ("median 3x3", lambda: MedianFilter(kernel_size=3), "differentiable"),
        ("Gaussian blur 1", lambda: GaussianBlur(sigma=1.0), "differentiable"),
        ("Gaussian noise 0.1", lambda: GaussianNoise(sigma=0.1), "EOT"),
        ("resize-pad", lambda: ResizePad(), "EOT"),
        ("translate 2px", lambda: RandomTranslate(max_shift=2), "EOT"),
        ("rotate 15deg", lambda: RandomRotate(max_degrees=15.0), "EOT"),
    ]
    for name, make, note in transforms:
        out.append(
            (name, lambda n=name, m=make, t=note: inference_row(bench, n, defend(base, m()), t))
        )

    def rse() -> Row:
        noisy = random_self_ensemble(zoo.load("mnist_cnn").module, init_sigma=0.2, inner_sigma=0.1)
        tuned = bench.trained_module("rse", noisy)
        deployed = Classifier(SelfEnsemble(tuned, samples=10), num_classes=10)
        # The self-ensemble already averages 10 draws per pass: EOT over them is the attack.
        note = "EOT over the ensemble's own 10 draws; fine-tuned with noise"
        return inference_row(bench, "random self-ensemble", deployed, note, eot_samples=1)

    out.append(("random self-ensemble", rse))

    def magnet() -> Row:
        ae = train_autoencoder(bench.x_train, epochs=10, seed=0)
        x_val = bench.x_train[:1000]
        detectors = [
            ReconstructionDetector(ae, p=1).fit(x_val, 0.025),
            ReconstructionDetector(ae, p=2).fit(x_val, 0.025),
        ]
        guard = MagNet(base, Reformer(ae), detectors).fit(x_val, 0.05)
        return detector_row(bench, "MagNet", guard.classifier, guard, "reformer + 2 detectors")

    def kdbu() -> Row:
        det = KDBUDetector(base)
        reference_x, reference_y = bench.x_train[:3000], bench.y_train[:3000]
        held_x, held_y = bench.x_train[3000:], bench.y_train[3000:]  # not in the densities
        g = torch.Generator().manual_seed(0)
        noisy = (held_x + 0.1 * torch.randn(held_x.shape, generator=g)).clamp(0, 1)
        attacked = _pgd(0.3)(base, held_x, held_y)
        broken = attacked.x_adv[attacked.success]  # the paper fits on successful ones only
        det.fit(reference_x, reference_y, held_x, noisy, broken, fpr=0.05)
        return detector_row(bench, "KD + BU detector", base, det, "Feinman et al.")

    out += [("MagNet", magnet), ("KD + BU detector", kdbu)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20, help="epochs of the defenses trained here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench-defenses"))
    p.add_argument("--only", default=None, help="comma list of row names to run")
    p.add_argument("--fresh", action="store_true", help="forget earlier rows and models")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "rows.jsonl"
    if args.fresh and log.exists():
        log.unlink()
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if row.get("n") == args.n:
                done[row["defense"]] = row
    bench = Bench(args)
    wanted = set(args.only.split(",")) if args.only else None
    table = []
    for name, compute in rows(bench):
        if wanted is not None and name not in wanted:
            continue
        if name in done:
            table.append(done[name])
            continue
        print(f"{name} ...", flush=True)
        started = time.perf_counter()
        row = compute()
        row.update(n=args.n, seconds=round(time.perf_counter() - started, 1))
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
        table.append(row)
        print(f"  {_fmt(row)}", flush=True)
    print(f"\n{args.n} mnist5k test images; robust accuracy in % (L-inf)\n")
    print("| defense | eps | clean | naive attack | adaptive attack | worst case | note |")
    print("|---|---|---|---|---|---|---|")
    for row in table:
        worst = f"{100 * row['worst']:.1f}" if "worst" in row else "—"
        print(
            f"| {row['defense']} | {row['eps']} | {100 * row['clean']:.1f} | "
            f"{100 * row['naive']:.1f} | {100 * row['adaptive']:.1f} | {worst} | {row['note']} |"
        )


def _fmt(row: Row) -> str:
    return (
        f"clean {100 * row['clean']:.1f}%, naive {100 * row['naive']:.1f}%, adaptive "
        f"{100 * row['adaptive']:.1f}% ({row['seconds']} s)"
    )


if __name__ == "__main__":
    main()
