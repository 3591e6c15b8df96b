"""ZOO on a zoo model: advex's ``ZOO`` against ART's ``ZooAttack``, same images, same budget.

Both attack the first ``n`` mnist5k test images (untargeted, L2, minimum norm) of the model
``advex.zoo.load(name)`` with the paper's ZOO-ADAM settings, matched as closely as the two
libraries allow:

* 128 coordinates per iteration, finite-difference step h = 1e-4, Adam lr 0.01, β = (0.9,
  0.999), confidence κ = 0, the loss on log-probabilities / logits (the same margin), one
  constant c = ``CONST`` (no binary search: it does not fit a budget of a few thousand queries);
* the budget: advex ``max_queries`` per sample (clean pass included, honoured exactly); ART has
  no query budget, so it runs ``max_iter = (max_queries − 1) // 257`` iterations of 2·128 + 1
  queries, with ``abort_early=False`` so that it spends them all as advex does. ART's queries
  are counted by a wrapper around the model (every point ART asks for, its own bookkeeping
  passes included) and reported as measured;
* ART runs on the image grid (``use_resize=False``: its resizing targets 32×32 and up, larger
  than MNIST's 28×28) — its importance sampling only acts on resized grids, so it is inactive;
  advex runs its defaults (``resize="auto"``: a 14×14 grid first, then 28×28, importance
  sampling on the second). ``--same-grid`` runs advex with ``resize=None`` too;
* ART attacks one image at a time (its ``batch_size`` > 1 updates only the first image's
  coordinates in 1.20.1), so it is called per image; advex attacks all images in one call.

What ART 1.20.1's ``ZooAttack`` does differently from the paper (read from its source; they
explain the numbers): its perturbation ("noise") is clipped to the box [0, 1] itself, so it can
only brighten pixels; each iteration sets x_adv ← x_adv + noise, so the Adam-updated noise is
added again every iteration (the perturbation grows much faster than the paper's lr = 0.01
coordinate steps allow: larger distances, and more successes on the image grid); and it queries
points outside the box during the optimization (only its final output is clipped), so some of
its internal successes do not survive the clip.

Every output is re-checked here: in the box [0, 1], success by a fresh forward of the model,
L2 distance recomputed. ``median_l2`` is over the successful images.

Run: ``python benchmarks/bb_zoo.py --n 20 --max-queries 10000``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks.blackbox.zoo import ZOO
from common import art_classifier, predict, split_available

CONST = 10.0
COORDINATES = 128
H = 1e-4
LR = 0.01


class Counting(nn.Module):
    """Passes inputs to ``module`` and counts every point it sees."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.points = 0

    def forward(self, x: Tensor) -> Tensor:
        self.points += int(x.shape[0])
        return self.module(x)


def _row(
    library: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    queries: list[int],
    s: float,
) -> dict[str, Any]:
    in_box = (x_adv.flatten(1).amin(1) >= 0) & (x_adv.flatten(1).amax(1) <= 1)
    correct = predict(model, x) == y
    won = (predict(model, x_adv) != y) & in_box & correct
    dist = (x_adv - x).flatten(1).double().norm(dim=1)
    wins = dist[won].tolist()
    return {
        "library": library,
        "success_rate": float(won.sum()) / max(int(correct.sum()), 1),
        "median_l2": statistics.median(wins) if wins else float("nan"),
        "median_queries": statistics.median(queries),
        "seconds": s,
    }


def run_advex(
    model: nn.Module, x: Tensor, y: Tensor, max_queries: int, same_grid: bool = False
) -> dict[str, Any]:
    attack = ZOO(
        ThreatModel("l2"),
        max_queries=max_queries,
        coordinates=COORDINATES,
        h=H,
        step_size=LR,
        initial_const=CONST,
        binary_search_steps=1,
        **({"resize": None} if same_grid else {}),
    )
    counted = Counting(model)
    start = time.perf_counter()
    res = attack(counted, x, y)
    seconds = time.perf_counter() - start
    if counted.points != int(res.queries.sum()) + len(x):  # + the final re-check
        raise RuntimeError("advex ZOO: queries do not match the points the model saw")
    name = "advex" + (" (resize=None)" if same_grid else "")
    return _row(name, model, x, y, res.x_adv.detach(), res.queries.tolist(), seconds)


def run_art(model: nn.Module, x: Tensor, y: Tensor, max_queries: int) -> dict[str, Any]:
    from art.attacks.evasion import ZooAttack

    counted = Counting(model)
    attack = ZooAttack(
        art_classifier(counted, x),
        confidence=0.0,
        targeted=False,
        learning_rate=LR,
        max_iter=max((max_queries - 1) // (2 * COORDINATES + 1), 1),
        binary_search_steps=1,
        initial_const=CONST,
        abort_early=False,
        use_resize=False,
        use_importance=True,
        nb_parallel=COORDINATES,
        batch_size=1,
        variable_h=H,
        verbose=False,
    )
    outs, queries = [], []
    start = time.perf_counter()
    for i in range(len(x)):
        before = counted.points
        outs.append(torch.from_numpy(attack.generate(x[i : i + 1].numpy(), y[i : i + 1].numpy())))
        queries.append(counted.points - before)
    seconds = time.perf_counter() - start
    return _row("art", model, x, y, torch.cat(outs).float(), queries, seconds)


def run_zoo(
    model_name: str, n: int, max_queries: int, threads: int, same_grid: bool = False
) -> list[dict[str, Any]]:
    """advex ZOO and ART ZOO on the first ``n`` mnist5k test images of ``model_name``."""
    torch.set_num_threads(threads)
    model = zoo.load(model_name).module.eval()
    x, y = data.load("mnist5k", split="test")
    x, y = x[:n], y[:n]
    rows = []
    peers, _ = split_available(["art"])
    torch.manual_seed(0)
    rows.append(run_advex(model, x, y, max_queries))
    if same_grid:
        rows.append(run_advex(model, x, y, max_queries, same_grid=True))
    if "art" in peers:
        torch.manual_seed(0)
        np.random.seed(0)  # ART draws its coordinates from numpy's global generator
        rows.append(run_art(model, x, y, max_queries))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="mnist_cnn")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--max-queries", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--same-grid", action="store_true", help="also run advex with resize=None")
    args = ap.parse_args()
    rows = run_zoo(args.model, args.n, args.max_queries, args.threads, args.same_grid)
    print(
        f"{args.n} mnist5k test images, {args.model}, ZOO-ADAM, budget {args.max_queries} "
        f"queries, {args.threads} thread(s)"
    )
    print(f"{'library':<22}{'success':>9}{'median L2':>11}{'median queries':>16}{'seconds':>9}")
    for r in rows:
        print(
            f"{r['library']:<22}{100 * r['success_rate']:8.1f}%{r['median_l2']:11.4f}"
            f"{r['median_queries']:16.0f}{r['seconds']:9.2f}"
        )


if __name__ == "__main__":
    main()
