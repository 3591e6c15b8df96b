"""Square L2 inside the ``standard`` ensemble: advex's Square against torchattacks' on the same
samples — the ones advex's APGD-CE, APGD-T and FAB-T leave robust.

On ``mnist_cnn_pgd``, the first ``--n`` mnist5k test images, L2 ε = 2: advex ``standard`` runs
once (seed 0); the samples that reach its Square member (broken by Square, or robust at the end)
are then attacked by advex's ``Square`` and by torchattacks' ``Square`` (5000 queries, one
restart, margin loss) with several seeds each, and the samples each breaks are counted here;
advex's Square runs with its p schedule rescaled to the 5000 queries (torchattacks' default)
and not rescaled (AutoAttack's own ensemble).

Run: ``python benchmarks/square_leftover.py``.
"""

from __future__ import annotations

import argparse

import torch

from advex import ThreatModel, data, zoo
from advex.attacks import Square, standard
from common import predict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks as ta

    x, y = data.load("mnist5k", split="test")
    x, y = x[: args.n], y[: args.n]
    model = zoo.load("mnist_cnn_pgd").module.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    threat = ThreatModel("l2", 2.0)
    res = standard(threat, seed=0, batch_size=500)(model, x, y)
    square = res.members.index("square")
    rows = ((res.broken_by == square) | (res.pred == y)).nonzero().squeeze(1)
    xs, ys = x[rows], y[rows]
    print(
        f"{len(rows)} samples reach Square in advex standard (seed 0); it broke "
        f"{int((res.broken_by == square).sum())}"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        out = ta.Square(model, norm="L2", eps=2.0, n_queries=5000, seed=seed, n_restarts=1)(xs, ys)
        inside = (out - xs).flatten(1).norm(dim=1) <= 2.0 + 1e-5
        t_broke = int(((predict(model, out) != ys) & inside).sum())
        a = Square(threat, max_queries=5000, seed=seed + 10, batch_size=500)(model, xs, ys)
        b = Square(threat, max_queries=5000, seed=seed + 10, batch_size=500, rescale=False)(
            model, xs, ys
        )
        print(
            f"seed {seed}: torchattacks Square broke {t_broke}; advex Square (seed "
            f"{seed + 10}) broke {int((a.pred != ys).sum())}, with AutoAttack's schedule "
            f"(not rescaled) {int((b.pred != ys).sum())}"
        )


if __name__ == "__main__":
    main()
