"""Epoch time of ``advex.defenses.train`` with PGD adversarial training against a hand-written
plain PyTorch PGD-AT loop doing the same work.

Both train the zoo's ``mnist_cnn`` on the 4,000 mnist5k training images, batch 100, Adam
(lr 1e-3), random shifts of up to 2 pixels, L∞ ε = 0.3 with PGD-10 (step 2.5·ε/10, uniform
random start, the model in eval mode during the attack, last iterate), cross-entropy on the
adversarial batch. The plain loop is what a user would write from the paper: the PGD loop with
``torch.autograd.grad``, ``sign``, ``clamp``; no channels-last layout. advex's loop adds what
a long run needs (ε ramp bookkeeping, per-epoch checkpoint, generators, the NaN check; its
validation is off here, ``val_n=0``, since the plain loop has none).

Each of ``--epochs`` epochs is timed for both, alternating which runs first; the verdict is the
median over epochs of time(advex)/time(plain); target ≤ 1.1×. Epoch time excludes data loading
(both read the same in-memory tensors) and includes the checkpoint write for advex.

Run: ``python benchmarks/train_speed.py --threads 2`` (``make bench-train``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advex import data
from advex.defenses import PGDAT, TrainConfig, train
from advex.defenses.training import shift_batch
from advex.zoo.architectures import build

EPS, STEPS, BATCH, LR, SHIFT = 0.3, 10, 100, 1e-3, 2


def plain_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x_train: Tensor,
    y_train: Tensor,
    gen: torch.Generator,
) -> float:
    """One epoch of the hand-written PGD-AT loop; returns its seconds."""
    start = time.perf_counter()
    perm = torch.randperm(len(y_train), generator=gen)
    alpha = 2.5 * EPS / STEPS
    for i in range(math.ceil(len(y_train) / BATCH)):
        idx = perm[i * BATCH : (i + 1) * BATCH]
        x = shift_batch(x_train[idx], SHIFT, gen)
        y = y_train[idx]
        model.eval()
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(STEPS):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-EPS, EPS)
            delta = (x + delta).clamp(0, 1) - x
        model.train()
        loss = F.cross_entropy(model(x + delta), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = data.load("mnist5k", split="train")
    torch.manual_seed(0)
    mine, theirs = build("mnist_cnn"), build("mnist_cnn")
    theirs.load_state_dict(mine.state_dict())
    opt = torch.optim.Adam(theirs.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    print(
        f"mnist_cnn, {len(y)} mnist5k train images, batch {BATCH}, PGD-{STEPS} at linf {EPS}, "
        f"{args.threads} threads, {args.epochs} epochs each (alternating)"
    )
    times: dict[str, list[float]] = {"advex": [], "plain": []}
    with tempfile.TemporaryDirectory() as out:
        for epoch in range(args.epochs):
            order = ("advex", "plain") if epoch % 2 == 0 else ("plain", "advex")
            for who in order:
                if who == "plain":
                    times["plain"].append(plain_epoch(theirs, opt, x, y, gen))
                    continue
                config = TrainConfig(
                    epochs=epoch + 1, batch_size=BATCH, lr=LR, shift=SHIFT, val_n=0
                )
                started = time.perf_counter()
                train(
                    mine,
                    (x, y),
                    PGDAT(eps=EPS, steps=STEPS),
                    config=config,
                    out=out,
                    resume=epoch > 0,
                    progress=False,
                    log=lambda s: None,
                )
                times["advex"].append(time.perf_counter() - started)
            print(
                f"epoch {epoch + 1}: advex {times['advex'][-1]:.2f} s (resume + checkpoint "
                f"included), plain {times['plain'][-1]:.2f} s"
            )
    ratio = statistics.median(a / b for a, b in zip(times["advex"], times["plain"], strict=True))
    verdict = "PASS" if ratio <= 1.1 else "FAIL"
    print(
        f"median epoch: advex {statistics.median(times['advex']):.2f} s, plain "
        f"{statistics.median(times['plain']):.2f} s; advex/plain {ratio:.2f}x "
        f"(target <= 1.10x) {verdict}"
    )


if __name__ == "__main__":
    main()
