"""advex's black-box attacks against the peers that have the same attack, side by side.

On the bundled standard CNN (``mnist_cnn``) and the PGD-trained CNN (``mnist_cnn_pgd``), the
first ``--n`` mnist5k test images (default 500), ``--threads`` CPU threads:

* **Square**, L∞ ε = 0.3, 5000 queries, one restart: advex ``Square`` against torchattacks'
  ``Square`` (p_init 0.8, margin loss). Success rate and median queries over the clean-correct
  samples each broke, seconds. torchattacks' own per-sample query counter
  (``attack_single_run``) starts after its clean pass; one is added so both count the clean
  pass, as advex does.
* **HopSkipJump**, L2, at 1000 and 5000 queries, the first ``--hsja-n`` images (default 100):
  median L2 against ART's HopSkipJump (``bb_hsja.py``; ART's queries counted and capped by a
  wrapper around the model, its result the closest adversarial point it queried).
* **ZOO**, 10 000 queries, the first ``--zoo-n`` images (default 100): success, median L2 and
  queries against ART's ZooAttack with matched settings (``bb_zoo.py``). Both are
  minimum-norm searches that go on shrinking the perturbation after the first success, so both
  spend their whole budget (ART in whole iterations of 257 queries: 9 768 of 10 000); the
  median queries are printed, not judged.

Every peer's returned points are re-checked here: in the box (and in the ε-ball for Square),
success decided by a fresh forward pass of the model. Targets (issue 5): success ≥ the peer's,
median distance ≤ 1.0× the peer's at the same budget, wall time ≤ 1.0× the peer's.

Run: ``make bench-blackbox`` (or ``python benchmarks/blackbox.py --help``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks import Square
from advex.norms import lp_norm
from advex.result import ball_tolerance
from common import predict, split_available


def _median(values: Tensor) -> float:
    return float(values.double().median()) if values.numel() else float("nan")


def square_rows(model: nn.Module, x: Tensor, y: Tensor, eps: float, queries: int, seed: int):  # type: ignore[no-untyped-def]
    """Square L∞ by advex and torchattacks on the clean-correct samples of (x, y)."""
    rows = []
    ok = predict(model, x) == y
    x, y = x[ok], y[ok]
    start = time.perf_counter()
    res = Square(ThreatModel("linf", eps), max_queries=queries, seed=seed)(model, x, y)
    seconds = time.perf_counter() - start
    broken = _check(model, x, y, res.x_adv, eps)
    rows.append(
        {
            "library": "advex",
            "success_rate": float(broken.float().mean()),
            "median_queries": _median(res.queries[broken].float()),
            "seconds": seconds,
        }
    )
    (peers, _) = split_available(["torchattacks"])
    if peers:
        import torchattacks as ta

        atk = ta.Square(
            model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, p_init=0.8, seed=seed
        )
        start = time.perf_counter()
        atk.init_hyperparam(x)
        torch.random.manual_seed(seed)
        n_queries, x_adv = atk.attack_single_run(x, y)
        seconds = time.perf_counter() - start
        broken = _check(model, x, y, x_adv, eps)
        rows.append(
            {
                "library": "torchattacks",
                "success_rate": float(broken.float().mean()),
                "median_queries": _median(n_queries[broken].float() + 1),
                "seconds": seconds,
            }
        )
    return rows


def _check(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, eps: float) -> Tensor:
    """Broken per sample, recomputed here; points outside the ball or box count as not broken."""
    valid = lp_norm(x_adv - x, "linf") <= eps + ball_tolerance(eps)
    valid &= (x_adv.flatten(1).amin(1) >= 0) & (x_adv.flatten(1).amax(1) <= 1)
    if not bool(valid.all()):
        print(f"  {int((~valid).sum())} invalid points (outside the ball or the box)")
    return (predict(model, x_adv) != y) & valid


def _print(title: str, rows: list[dict], keys: list[str]) -> None:
    print(f"\n== {title} ==")
    print(f"{'library':<14}" + "".join(f"{k:>16}" for k in keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, float("nan"))
            cells.append(f"{v:>16.2%}" if k == "success_rate" else f"{v:>16.4g}")
        print(f"{r['library']:<14}" + "".join(cells))


def _verdict(rows: list[dict], more: str, less: list[str]) -> list[str]:
    """advex against each peer: ``more`` must be ≥, ``less`` keys ≤ (as ratios)."""
    mine = next(r for r in rows if r["library"] == "advex")
    out = []
    for peer in (r for r in rows if r["library"] != "advex"):
        ok = mine[more] >= peer[more]
        line = f"{more} {mine[more]:.2%} vs {peer[more]:.2%} {'PASS' if ok else 'FAIL'}"
        for k in less:
            ratio = mine[k] / peer[k] if peer[k] else float("inf")
            line += f"; {k} {ratio:.3f}× {'PASS' if ratio <= 1.0 else 'FAIL'}"
        out.append(f"vs {peer['library']}: {line}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="mnist_cnn,mnist_cnn_pgd")
    p.add_argument("--attacks", default="square,hsja,zoo")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--hsja-n", type=int, default=100, help="images for HopSkipJump")
    p.add_argument("--zoo-n", type=int, default=100, help="images for ZOO (costly per image)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x_all, y_all = data.load("mnist5k", split="test")
    verdicts: list[str] = []
    for name in args.models.split(","):
        model = zoo.load(name).module.eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        x, y = x_all[: args.n], y_all[: args.n]
        print(f"\n#### {name}: {len(y)} mnist5k test images, {args.threads} threads")
        if "square" in args.attacks:
            rows = square_rows(model, x, y, 0.3, 5000, args.seed)
            _print(
                "Square L∞ ε=0.3, 5000 queries", rows, ["success_rate", "median_queries", "seconds"]
            )
            verdicts += [f"{name} Square: {v}" for v in _verdict(rows, "success_rate", ["seconds"])]
        if "hsja" in args.attacks:
            from bb_hsja import run_hsja

            rows = run_hsja(name, args.hsja_n, (1000, 5000), args.threads)
            for budget in sorted({r["budget"] for r in rows}):
                part = [r for r in rows if r["budget"] == budget]
                _print(
                    f"HopSkipJump L2, {budget} queries",
                    part,
                    ["success_rate", "median_l2", "median_queries", "seconds"],
                )
                verdicts += [
                    f"{name} HSJ@{budget}: {v}"
                    for v in _verdict(part, "success_rate", ["median_l2", "seconds"])
                ]
        if "zoo" in args.attacks:
            from bb_zoo import run_zoo

            rows = run_zoo(name, args.zoo_n, 10_000, args.threads)
            _print("ZOO", rows, ["success_rate", "median_l2", "median_queries", "seconds"])
            verdicts += [
                f"{name} ZOO: {v}" for v in _verdict(rows, "success_rate", ["median_l2", "seconds"])
            ]
    print("\n== verdicts ==")
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
