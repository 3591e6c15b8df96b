"""Universal adversarial perturbations: advex against ART, fitted and measured side by side.

On the bundled standard CNN (``mnist_cnn``), one v is fitted on the first ``--n-fit`` mnist5k
train images and measured on the first ``--n-test`` test images, for L∞ ξ = 0.2 and L2 ξ = 3.0:

* advex ``Universal`` (Moosavi-Dezfooli et al. 2017, batched: see its module doc) and ART's
  ``UniversalPerturbation(attacker="deepfool")`` with the same settings: δ = 0.2 (stop once the
  fooling rate on the fitting data reaches 80 %), at most ``--passes`` passes over the fitting
  data (ART's ``max_iter``; default 10), at most ``--steps`` DeepFool iterations per point
  (ART's DeepFool ``max_iter``; default 10), overshoot 0.02 (ART's DeepFool ``epsilon``; ART
  applies it once to the final DeepFool step, advex to every iterate, as the DeepFool paper),
  the same ξ and norm (``norm=np.inf`` / ``norm=2``). ART's DeepFool is the L2 one whatever the
  norm, like advex's default (``deepfool_norm="l2"``), and computes the gradients of all 10
  classes (``nb_grads=10``) per step; advex considers ``candidates=3`` classes (its default) —
  the row "advex Universal c10" runs advex with all 10 for a like-for-like cost. ART works one
  image at a time (its algorithm is sequential: each point sees the v its predecessor left),
  advex ``--batch`` points at a time (default 32: DeepFool runs on all the unfooled points of a
  minibatch at once, v ← P(v + Σ Δv_i)). ART's shuffling uses Python's ``random``, seeded here.
* advex ``UniversalSGD`` (projected minibatch ascent on the cross-entropy, 10 epochs) as an
  extra row: another solver of the same problem, not compared with ART.

Both libraries' perturbations are measured here, outside both: x' = clip(x + v, 0, 1), fooled
iff the model's label of x' differs from its label of x (the papers' fooling rate, on the
held-out images and on the fitting images), and ‖v‖_p ≤ ξ is checked. Seconds are the wall time
of each fit, measured in the same run with the same ``--threads``. Targets: advex's held-out
fooling rate ≥ ART's, advex's fit time ≤ 1.0× ART's.

ART's fit is a Python loop over images with per-image model calls (30–55 ms per image and
pass on 2 threads here); the default ``--n-fit 500`` keeps the whole run under ten minutes.
Other processes on the machine make the times noisy; each ratio is measured within one run.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/universal.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks.universal import Universal, UniversalSGD
from advex.norms import lp_norm
from advex.result import ball_tolerance
from common import art_classifier, predict, split_available

SETTINGS = {"linf": 0.2, "l2": 3.0}


def _measure(
    model: nn.Module, v: Tensor, norm: str, eps: float, xs: dict[str, Tensor]
) -> dict[str, Any]:
    """Fooling rates of v on each image set and ‖v‖, computed here."""
    size = float(lp_norm(v, norm)[0])
    out: dict[str, Any] = {"norm_v": size, "in_ball": size <= eps + ball_tolerance(eps)}
    for name, x in xs.items():
        fooled = predict(model, (x + v).clamp(0, 1)) != predict(model, x)
        out[name] = float(fooled.float().mean())
    return out


def run_norm(model: nn.Module, norm: str, args: argparse.Namespace, xs: dict[str, Tensor]):  # type: ignore[no-untyped-def]
    eps = SETTINGS[norm]
    threat = ThreatModel(norm, eps)
    x_fit, y_fit = xs["fit"], xs["y_fit"]
    sets = {"held_out": xs["test"], "fit": x_fit}
    common = {"delta": args.delta, "max_passes": args.passes, "steps": args.steps}
    rows = []
    for label, attack in (
        ("advex Universal", Universal(threat, **common, batch_size=args.batch, seed=args.seed)),
        (
            "advex Universal c10",
            Universal(threat, **common, candidates=10, batch_size=args.batch, seed=args.seed),
        ),
        ("advex UniversalSGD", UniversalSGD(threat, batch_size=args.batch, seed=args.seed)),
    ):
        start = time.perf_counter()
        fitted = attack.fit(model, x_fit, y_fit)
        seconds = time.perf_counter() - start
        rows.append(
            {"library": label, "seconds": seconds, "passes": len(fitted.history)}
            | _measure(model, fitted.v, norm, eps, sets)
        )
    (peers, _) = split_available(["art"])
    if peers:
        from art.attacks.evasion import UniversalPerturbation

        clf = art_classifier(model, x_fit)
        atk = UniversalPerturbation(
            clf,
            attacker="deepfool",
            attacker_params={"max_iter": args.steps, "epsilon": 0.02, "verbose": False},
            delta=args.delta,
            max_iter=args.passes,
            eps=eps,
            norm=np.inf if norm == "linf" else 2,
            verbose=False,
        )
        random.seed(args.seed)
        start = time.perf_counter()
        atk.generate(x_fit.numpy())  # y=None: ART fools the model's own labels, as advex
        seconds = time.perf_counter() - start
        noise = atk.noise
        assert noise is not None
        v = torch.from_numpy(np.asarray(noise, dtype=np.float32)).reshape(1, *x_fit.shape[1:])
        passes = args.passes if not atk.converged else None
        rows.append(
            {"library": "ART", "seconds": seconds, "passes": passes}
            | _measure(model, v, norm, eps, sets)
        )
    return rows


def _print(title: str, rows: list[dict]) -> None:
    print(f"\n== {title} ==")
    keys = ["held_out", "fit", "norm_v", "seconds", "passes"]
    print(f"{'library':<22}" + "".join(f"{k:>12}" for k in keys) + f"{'in ball':>9}")
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            if v is None:
                cells.append(f"{'≤max':>12}")
            elif k in ("held_out", "fit"):
                cells.append(f"{v:>12.2%}")
            else:
                cells.append(f"{v:>12.4g}")
        print(f"{r['library']:<22}" + "".join(cells) + f"{'yes' if r['in_ball'] else 'NO':>9}")


def _verdict(rows: list[dict], mine: str) -> str:
    a = next(r for r in rows if r["library"] == mine)
    art = next((r for r in rows if r["library"] == "ART"), None)
    if art is None:
        return f"{mine}: ART not installed"
    gain = a["held_out"] - art["held_out"]
    ratio = a["seconds"] / art["seconds"]
    ok_rate = gain >= 0 and a["in_ball"]
    return (
        f"{mine} vs ART: held-out fooling rate {a['held_out']:.2%} − {art['held_out']:.2%} = "
        f"{gain:+.2%} {'PASS' if ok_rate else 'FAIL'}; time {ratio:.3f}× "
        f"{'PASS' if ratio <= 1.0 else 'FAIL'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-fit", type=int, default=500, help="train images to fit v on")
    p.add_argument("--n-test", type=int, default=1000, help="held-out test images")
    p.add_argument("--norms", default="linf,l2")
    p.add_argument("--passes", type=int, default=10, help="passes at most (ART's max_iter)")
    p.add_argument("--steps", type=int, default=10, help="DeepFool iterations per point")
    p.add_argument("--delta", type=float, default=0.2)
    p.add_argument("--batch", type=int, default=32, help="advex minibatch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load("mnist_cnn").module.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    x, y = data.load("mnist5k", split="train")
    xt, _ = data.load("mnist5k", split="test")
    xs = {"fit": x[: args.n_fit], "y_fit": y[: args.n_fit], "test": xt[: args.n_test]}
    print(
        f"mnist_cnn: v fitted on {args.n_fit} train images, fooling rate on {args.n_test} test "
        f"images; δ={args.delta}, ≤{args.passes} passes, ≤{args.steps} DeepFool steps, "
        f"{args.threads} threads"
    )
    verdicts = []
    for norm in args.norms.split(","):
        rows = run_norm(model, norm, args, xs)
        _print(f"{norm} ξ={SETTINGS[norm]:g}", rows)
        verdicts += [
            f"{norm}: {_verdict(rows, m)}" for m in ("advex Universal", "advex Universal c10")
        ]
    print("\n== verdicts ==")
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
