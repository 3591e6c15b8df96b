"""HopSkipJump L2 at a fixed query budget: advex against ART, on the same MNIST images.

Both libraries attack the clean-correct images among the first ``n`` of the mnist5k test split
(untargeted, L2, labels only) with at most ``budget`` model queries per image, the clean pass
included. ART's ``HopSkipJump`` counts iterations, not queries, so it runs with an iteration
limit it never reaches, one image at a time, on a model wrapped in a counter that answers at
most ``budget`` points per image and then halts the attack. ART's result is the closest
adversarial point among the points it queried within the budget — the rule advex's tracker
applies to its own queries (ART itself would return its last iterate, never closer). ART keeps
its defaults (init_eval 100, max_eval 10 000, init_size 100; its θ = 0.01/√d differs from the
paper's d^{−3/2}, which advex uses).

Every result is re-checked here: points in [0, 1], success from a fresh forward of the model.
Each row: library, budget, success rate (among the clean-correct images), median ‖δ‖₂ with
failures counted as ∞ (so a library that gives up does not look closer), median queries per
image, total queries (ART stops early on images it cannot start from: compare seconds per
query too) and seconds (wall time of the attack).

Run: ``python benchmarks/bb_hsja.py --n 20 --budgets 1000 5000``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks.blackbox.hsja import HopSkipJump
from common import art_classifier, available, predict


class _BudgetSpent(Exception):
    """Raised by the counting wrapper once an image's query budget is used up."""


class _Counted(nn.Module):
    """Answers at most ``budget`` points per image; remembers the closest adversarial one."""

    def __init__(self, model: nn.Module, budget: int) -> None:
        super().__init__()
        self.model = model
        self.budget = budget
        self.reset(torch.zeros(1), -1)

    def reset(self, x0: Tensor, y0: int) -> None:
        self.x0, self.y0 = x0, y0
        self.used = 0
        self.best = x0.clone()
        self.best_dist = math.inf

    def forward(self, x: Tensor) -> Tensor:
        left = self.budget - self.used
        if left <= 0:
            raise _BudgetSpent
        over = x.shape[0] > left
        x = x[:left].to(self.x0.dtype)
        z = self.model(x)
        self.used += x.shape[0]
        adv = z.argmax(dim=1) != self.y0
        if bool(adv.any()):
            dist = (x[adv] - self.x0).flatten(1).norm(dim=1)
            i = int(dist.argmin())
            if float(dist[i]) < self.best_dist:
                self.best_dist = float(dist[i])
                self.best = x[adv][i].detach().clone()
        if over:
            raise _BudgetSpent
        return z


def _row(
    library: str,
    budget: int,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    queries: list[int],
    seconds: float,
) -> dict[str, Any]:
    """Re-check ``x_adv`` here (box, fresh forward) and summarize."""
    inside = (x_adv >= 0).flatten(1).all(1) & (x_adv <= 1).flatten(1).all(1)
    success = (predict(model, x_adv) != y) & inside
    dist = (x_adv - x).flatten(1).norm(dim=1)
    dist = torch.where(success, dist, torch.full_like(dist, math.inf))
    return {
        "library": library,
        "budget": budget,
        "success_rate": float(success.float().mean()),
        "median_l2": float(dist.median()),
        "median_queries": statistics.median(queries),
        "total_queries": sum(queries),
        "seconds": seconds,
    }


def _advex(model: nn.Module, x: Tensor, y: Tensor, budget: int) -> dict[str, Any]:
    attack = HopSkipJump(ThreatModel("l2"), max_queries=budget)
    start = time.perf_counter()
    res = attack(model, x, y)
    seconds = time.perf_counter() - start
    return _row("advex", budget, model, x, y, res.x_adv, res.queries.tolist(), seconds)


def _art(model: nn.Module, x: Tensor, y: Tensor, budget: int) -> dict[str, Any]:
    from art.attacks.evasion import HopSkipJump as ArtHopSkipJump

    counted = _Counted(model, budget)
    attack = ArtHopSkipJump(
        art_classifier(counted, x),
        norm=2,
        max_iter=10**6,
        batch_size=256,
        verbose=False,
    )
    np.random.seed(0)
    outs, queries = [], []
    start = time.perf_counter()
    for i in range(len(x)):
        counted.reset(x[i], int(y[i]))
        with contextlib.suppress(_BudgetSpent):
            attack.generate(x=x[i : i + 1].numpy(), y=y[i : i + 1].numpy())
        outs.append(counted.best)
        queries.append(counted.used)
    seconds = time.perf_counter() - start
    return _row("art", budget, model, x, y, torch.stack(outs), queries, seconds)


def run_hsja(
    model_name: str, n: int, budgets: tuple[int, ...], threads: int
) -> list[dict[str, Any]]:
    """advex and (when installed) ART HopSkipJump L2 on the clean-correct images among the
    first ``n`` mnist5k test images of ``model_name``, at each query budget."""
    torch.set_num_threads(threads)
    model = zoo.load(model_name).eval()
    x, y = data.load("mnist5k", split="test")
    x, y = x[:n], y[:n]
    correct = predict(model, x) == y
    x, y = x[correct], y[correct]
    rows = []
    for budget in budgets:
        rows.append(_advex(model, x, y, budget))
        if available("art"):
            rows.append(_art(model, x, y, budget))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist_cnn")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = run_hsja(args.model, args.n, tuple(args.budgets), args.threads)
    head = f"{'library':8} {'budget':>7} {'success':>8} {'median L2':>10} {'queries':>8}"
    print(f"{head} {'total':>8} {'s':>7} {'ms/query':>9}")
    for r in rows:
        per = 1000 * r["seconds"] / max(r["total_queries"], 1)
        print(
            f"{r['library']:8} {r['budget']:>7} {r['success_rate']:>8.1%} "
            f"{r['median_l2']:>10.4f} {r['median_queries']:>8} {r['total_queries']:>8} "
            f"{r['seconds']:>7.1f} {per:>9.3f}"
        )


if __name__ == "__main__":
    main()
