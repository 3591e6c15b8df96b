"""The results store's overhead: ``run_evaluation`` with the store on against the store off.

What ``advex evaluate --attacks fgsm,pgd`` runs — the two bundled CNNs (``mnist_cnn``,
``mnist_cnn_pgd``), FGSM and PGD (40 steps) at L∞ ε = 0.05, 0.1, 0.2, 0.3, the first ``--n``
mnist5k test images, batches of 256 — runs ``--pairs`` times with the store on (every batch
written to a fresh ``store.sqlite`` in one transaction, adversarial images included, plus the
transfer predictions between the two models) and off, each pair back to back in alternating
order; the verdict is the median over pairs of time(on)/time(off), target ≤ 1.05×. The two
runs' per-sample results are checked identical. ``--light`` times the cheapest case instead:
``mnist_cnn`` alone at ε = 0.3, where PGD breaks every image in a step or two, so the store's
fixed costs (hashing the data, compressing every adversarial image, one fsync per batch) weigh
the most.

Run: ``make bench-store`` (or ``python benchmarks/store_overhead.py --help``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from advex import data, zoo
from advex.evaluate import grid_plan, run_evaluation
from advex.evaluate.store import Store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--light", action="store_true", help="mnist_cnn alone at linf 0.3")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = data.load("mnist5k", split="test")
    x, y = x[: args.n], y[: args.n]
    names = ["mnist_cnn"] if args.light else ["mnist_cnn", "mnist_cnn_pgd"]
    models = {name: zoo.load(name) for name in names}
    budgets = [0.3] if args.light else [0.05, 0.1, 0.2, 0.3]
    plan = grid_plan(["fgsm", "pgd"], "linf", budgets, steps=40)
    print(
        f"{', '.join(names)}, {len(y)} mnist5k test images, FGSM + PGD-40 at linf "
        f"{', '.join(map(str, budgets))}, batch {args.batch_size}, {args.threads} threads, "
        f"{args.pairs} pairs"
    )

    def once(store_on: bool) -> tuple[float, object, int]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            if store_on:
                with Store(Path(tmp)) as store:
                    res = run_evaluation(
                        models, x, y, plan, batch_size=args.batch_size, progress=False, store=store
                    )
            else:
                res = run_evaluation(models, x, y, plan, batch_size=args.batch_size, progress=False)
            seconds = time.perf_counter() - start
            size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        return seconds, res, size

    once(False)  # warm-up: first-call costs belong to neither side
    ratios = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        times = {}
        for on in order:
            times[on], res, size = once(on)
            if on:
                on_res, store_size = res, size
            else:
                off_res = res
        for a, b in zip(on_res.records, off_res.records, strict=True):  # type: ignore[attr-defined]
            assert torch.equal(a.result.x_adv, b.result.x_adv), "store on/off results differ"
            assert torch.equal(a.result.success, b.result.success)
        ratios.append(times[True] / times[False])
        print(
            f"pair {i + 1}: store on {times[True]:.2f} s, off {times[False]:.2f} s, "
            f"ratio {ratios[-1]:.3f}× (store file {store_size / 2**20:.1f} MiB)"
        )
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio <= 1.05 else "FAIL"
    print(f"\nverdict: store on / off = {ratio:.3f}× (median of {len(ratios)}) {verdict} (≤ 1.05×)")


if __name__ == "__main__":
    main()
