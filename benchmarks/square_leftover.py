"""Square L2 inside the ``standard`` ensemble: advex's Square against torchattacks' on the same
samples — the ones advex's APGD-CE, APGD-T and FAB-T leave robust.

On ``mnist_cnn_pgd``, the first ``--n`` mnist5k test images, L2 ε = 2: advex ``standard`` runs
once (seed 0); the samples that reach its Square member (broken by Square, or robust at the end)
are then attacked by torchattacks' ``Square`` (5000 queries, one restart, margin loss, its
default rescaled p schedule, as in its AutoAttack) and by advex's ``Square`` in each of the
``--variants``, with every seed of ``--seeds``; the samples each breaks are counted here (a
fresh forward pass, inside the ε-ball) and summarized as mean ± standard deviation over seeds:

* ``advex``: advex's defaults (p schedule rescaled to 5000 queries; window corners in the
  reference's range [0, h − s) × [0, w − s), as torchattacks);
* ``not-rescaled``: the 10 000-query thresholds as they are (AutoAttack's own ensemble);
* ``all-positions``: window corners in [0, h − s] × [0, w − s] (all positions, so windows
  may cover the last row and column: advex's range before it adopted the reference's).

Run: ``python benchmarks/square_leftover.py`` (about 2 minutes per seed and variant).
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from advex.attacks import Square, standard
from advex.attacks.blackbox import square as square_module
from common import predict

EPS = 2.0


@contextmanager
def all_positions() -> Iterator[None]:
    """advex's Square with window corners in [0, h − s] (all h − s + 1 positions, advex's range
    before it adopted the reference's [0, h − s)) while active."""
    original = square_module._window
    square_module._window = functools.partial(original, all_positions=True)
    try:
        yield
    finally:
        square_module._window = original


def advex_square(variant: str) -> Callable[[nn.Module, Tensor, Tensor, int], Tensor]:
    threat = ThreatModel("l2", EPS)

    def run(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
        attack = Square(
            threat,
            max_queries=5000,
            seed=seed,
            batch_size=500,
            rescale=variant != "not-rescaled",
        )
        if variant == "all-positions":
            with all_positions():
                return attack(model, x, y).x_adv
        return attack(model, x, y).x_adv

    return run


def torchattacks_square(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
    import torchattacks as ta

    return ta.Square(model, norm="L2", eps=EPS, n_queries=5000, seed=seed, n_restarts=1)(x, y)


VARIANTS = ("advex", "not-rescaled", "all-positions")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", default="10,11,12,13,14")
    p.add_argument("--variants", default="advex,all-positions")
    p.add_argument("--no-torchattacks", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    x, y = data.load("mnist5k", split="test")
    x, y = x[: args.n], y[: args.n]
    model = zoo.load("mnist_cnn_pgd").module.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    res = standard(ThreatModel("l2", EPS), seed=0, batch_size=500)(model, x, y)
    square = res.members.index("square")
    rows = ((res.broken_by == square) | (res.pred == y)).nonzero().squeeze(1)
    xs, ys = x[rows], y[rows]
    print(
        f"{len(rows)} samples reach Square in advex standard (seed 0); it broke "
        f"{int((res.broken_by == square).sum())}",
        flush=True,
    )
    runners: dict[str, Callable[[nn.Module, Tensor, Tensor, int], Tensor]] = {}
    if not args.no_torchattacks:
        runners["torchattacks"] = torchattacks_square
    runners.update({f"advex {v}": advex_square(v) for v in variants})
    broke: dict[str, list[int]] = {k: [] for k in runners}
    for seed in seeds:
        for name, runner in runners.items():
            out = runner(model, xs, ys, seed)
            inside = (out - xs).flatten(1).norm(dim=1) <= EPS + 1e-5
            in_box = (out.flatten(1).amin(1) >= 0) & (out.flatten(1).amax(1) <= 1)
            n = int(((predict(model, out) != ys) & inside & in_box).sum())
            broke[name].append(n)
            print(f"seed {seed}: {name} broke {n}", flush=True)
    print(f"\nbroken among the {len(rows)} samples, over seeds {seeds}:")
    for name, counts in broke.items():
        sd = statistics.stdev(counts) if len(counts) > 1 else 0.0
        print(f"{name:<28} mean {statistics.mean(counts):7.2f}  sd {sd:5.2f}  {counts}")


if __name__ == "__main__":
    main()
