"""advex's ``standard`` ensemble against torchattacks' AutoAttack (standard version), side by side.

On the bundled PGD-trained CNN (``mnist_cnn_pgd``), the first ``--n`` mnist5k test images, for
L∞ ε = 0.3 and L2 ε = 2.0: both libraries run the standard recipe — APGD-CE, APGD-T (9 target
classes), FAB-T (9 target classes), Square (5000 queries), one restart each, every attack only on
the samples still robust — in batches of ``--batch-size`` with ``--threads`` CPU threads.

torchattacks' ``AutoAttack(version="standard")`` builds its APGD, APGD-T and FAB with their
default of 10 iterations, not AutoAttack's 100. So the comparison is at equal budgets: advex
``standard`` (100 steps) against the same four torchattacks members built with 100 steps, and
with ``--shipped`` also advex ``standard(steps=10)`` against torchattacks' AutoAttack as
shipped. The script prints

* robust accuracy, recomputed here with a fresh forward pass on each library's returned points
  (points outside the ε-ball or the box are reported and count as not broken),
* seconds, and advex's time as a fraction of torchattacks',
* the per-sample comparison: samples broken by torchattacks but not by advex (and the reverse),
  and for each of those, which advex member got closest (margin),
* advex's per-member breakdown and its sanity-check flags (``--checks``),

then the issue's verdicts: robust accuracy ≤ torchattacks' and wall time ≤ 0.8× torchattacks'.

Run: ``make bench-autoattack`` (or ``python benchmarks/autoattack.py --help``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks import standard
from advex.norms import lp_norm
from advex.result import ball_tolerance
from common import batches, predict, split_available

SETTINGS = {"linf": 0.3, "l2": 2.0}


def run_advex(  # type: ignore[no-untyped-def]
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, bs: int, seed: int, steps: int
):
    attack = standard(ThreatModel(norm, eps), steps=steps, seed=seed, batch_size=bs)
    start = time.perf_counter()
    res = attack(model, x, y)
    return res.x_adv, time.perf_counter() - start, res, attack


def run_torchattacks(  # type: ignore[no-untyped-def]
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    bs: int,
    seed: int,
    steps: int | None,
):
    """torchattacks' AutoAttack as shipped (``steps`` None: its members' default of 10 steps),
    or the same four members built with ``steps`` iterations (AutoAttack's 100)."""
    import torchattacks as ta

    name = {"linf": "Linf", "l2": "L2"}[norm]
    if steps is None:
        atk = ta.AutoAttack(model, norm=name, eps=eps, version="standard", n_classes=10, seed=seed)
    else:
        common = {"norm": name, "eps": eps, "seed": seed, "n_restarts": 1}
        atk = ta.MultiAttack(
            [
                ta.APGD(model, loss="ce", steps=steps, **common),
                ta.APGDT(model, n_classes=10, steps=steps, **common),
                ta.FAB(model, multi_targeted=True, n_classes=10, steps=steps, **common),
                ta.Square(model, n_queries=5000, **common),
            ]
        )
    start = time.perf_counter()
    out = torch.cat([atk(xb, yb) for xb, yb in batches(x, y, bs)])
    return out, time.perf_counter() - start


def robust_mask(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: str, eps: float):  # type: ignore[no-untyped-def]
    """Per sample: still correct on x_adv (invalid points count as not broken), and validity."""
    dist = lp_norm(x_adv - x, norm)
    valid = (dist <= eps + ball_tolerance(eps)) & (x_adv.flatten(1).amin(1) >= 0)
    valid &= x_adv.flatten(1).amax(1) <= 1
    pred = predict(model, x_adv)
    return (pred == y) | ~valid, valid


def compare(  # type: ignore[no-untyped-def]
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    steps: int,
    seed: int,
    args,
    peers,
) -> dict[str, float]:
    """One side-by-side run at one seed; prints its table and returns the figures."""
    x_a, t_a, res, attack = run_advex(model, x, y, norm, eps, args.batch_size, seed, steps)
    rob_a, val_a = robust_mask(model, x, y, x_a, norm, eps)
    rows = [(f"advex standard (steps={steps})", rob_a, val_a, t_a)]
    out = {"ra": float(rob_a.float().mean()), "ta": t_a}
    if "torchattacks" in peers:
        peer_steps = None if steps == 10 else steps
        x_t, t_t = run_torchattacks(model, x, y, norm, eps, args.batch_size, seed, peer_steps)
        rob_t, val_t = robust_mask(model, x, y, x_t, norm, eps)
        label = "torchattacks AutoAttack" + (
            " (as shipped)" if peer_steps is None else f" (steps={steps})"
        )
        rows.append((label, rob_t, val_t, t_t))
        out |= {"rt": float(rob_t.float().mean()), "tt": t_t}
    print(f"{'library':<38} {'robust acc':>10} {'invalid':>8} {'seconds':>9}")
    for name, rob, val, t in rows:
        print(f"{name:<38} {rob.float().mean():>10.2%} {int((~val).sum()):>8} {t:>9.1f}")
    counts = res.broken_counts()
    print("advex members (samples broken): " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if args.checks and steps == 100:
        from advex.evaluate.checks import run_checks

        for f in run_checks(model, x, y, attack, res, seed=seed):
            print(f"  check {f.name}: {'FIRED' if f.fired else 'ok'} — {f.message}")
    if len(rows) > 1:
        only_t = (~rob_t & rob_a).nonzero().squeeze(1).tolist()
        only_a = (~rob_a & rob_t).nonzero().squeeze(1).tolist()
        print(f"broken by torchattacks only: {len(only_t)} {only_t[:20]}")
        print(f"broken by advex only: {len(only_a)} {only_a[:20]}")
        print(f"time advex/torchattacks: {t_a / t_t:.2f}×")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mnist_cnn_pgd")
    p.add_argument("--norms", default="linf,l2")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        default=None,
        help="comma list of seeds: run each (100-step comparison only) and judge the mean "
        "robust accuracy and the total time (Square is a random search: one seed's count "
        "moves by ~±0.5 %%)",
    )
    p.add_argument("--checks", action="store_true", help="also run advex's sanity checks")
    p.add_argument(
        "--shipped",
        action="store_true",
        help="also compare advex standard(steps=10) with torchattacks' AutoAttack as shipped",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    (peers, _) = split_available(["torchattacks"])
    x, y = data.load("mnist5k", split="test")
    x, y = x[: args.n], y[: args.n]
    model = zoo.load(args.model).module.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    clean = predict(model, x) == y
    print(
        f"{args.model}, {len(y)} mnist5k test images (clean accuracy {clean.float().mean():.2%}), "
        f"batch {args.batch_size}, {args.threads} threads"
    )
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    verdicts = []
    for norm in args.norms.split(","):
        eps = SETTINGS[norm]
        for steps in (100, 10) if args.shipped else (100,):
            totals: dict[str, list[float]] = {"ra": [], "rt": [], "ta": [], "tt": []}
            for seed in seeds if steps == 100 else [args.seed]:
                print(
                    f"\n== {norm} ε={eps:g}, APGD/APGD-T/FAB-T {steps} steps, Square 5000 "
                    f"queries, seed {seed} =="
                )
                got = compare(model, x, y, norm, eps, steps, seed, args, peers)
                for k, v in got.items():
                    totals[k].append(v)
            if not totals["rt"]:
                continue
            ra, rt = statistics.mean(totals["ra"]), statistics.mean(totals["rt"])
            ratio = sum(totals["ta"]) / sum(totals["tt"])
            over = f" (mean of {len(totals['ra'])} seeds)" if len(totals["ra"]) > 1 else ""
            if len(totals["ra"]) > 1:
                print(
                    f"\n{norm} over seeds: advex "
                    + ", ".join(f"{v:.2%}" for v in totals["ra"])
                    + "; torchattacks "
                    + ", ".join(f"{v:.2%}" for v in totals["rt"])
                )
            verdicts.append(
                f"{norm} steps={steps}: robust acc {ra:.2%} vs {rt:.2%}{over} "
                f"{'PASS' if ra <= rt else 'FAIL'} (≤ peer); time {ratio:.2f}× "
                f"{'PASS' if ratio <= 0.8 else 'FAIL'} (≤ 0.8×)"
            )
    if verdicts:
        print("\nverdicts")
        for v in verdicts:
            print("  " + v)


if __name__ == "__main__":
    main()
