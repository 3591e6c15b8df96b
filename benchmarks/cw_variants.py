"""C&W L2 settings against Foolbox on the PGD-trained CNN: where does the median distance go?

On the first ``--n`` mnist5k test images of ``mnist_cnn_pgd``, 9 binary-search steps × ``--steps``
Adam steps (learning rate 0.1, κ = 0, c₀ = 1e-3), this runs advex ``CWL2`` as shipped (which
spends the iterations early aborts save on more bisection runs until c is bracketed to 5 %), with
``c_precision=0.01``, with the paper's exactly-9 runs (``reuse_budget=False``) and with
``abort_early=False``, and Foolbox's ``L2CarliniWagnerAttack``
with the same settings; it prints success rate, median and mean ‖δ‖₂ and seconds (``--threads``),
and per variant the median per-sample ratio to Foolbox's distance.

Run: ``python benchmarks/cw_variants.py --n 500 --threads 2 --variants
advex,reuse_budget=False`` (``abort_early=False`` alone takes several times longer).
"""

from __future__ import annotations

import argparse
import time

import torch

import minnorm as mn
from advex import ThreatModel, data, zoo
from advex.attacks import CWL2
from common import predict

#: advex CWL2 variants: name → keyword arguments.
VARIANTS: dict[str, dict[str, object]] = {
    "advex": {},
    "c_precision=0.01": {"c_precision": 0.01},
    "reuse_budget=False": {"reuse_budget": False},
    "abort_early=False": {"abort_early": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"advex variants to run, from {', '.join(VARIANTS)} (Foolbox always runs)",
    )
    args = p.parse_args()
    names = [k for k in args.variants.split(",") if k]
    unknown = [k for k in names if k not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    variants = {k: VARIANTS[k] for k in names}
    torch.set_num_threads(args.threads)
    x, y = data.load("mnist5k", split="test")
    x, y = x[: args.n], y[: args.n]
    model = zoo.load("mnist_cnn_pgd").module.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    mn.S.cw_steps = args.steps
    ok = predict(model, x) == y
    found: dict[str, torch.Tensor] = {}

    def report(name: str, x_adv: torch.Tensor, seconds: float) -> None:
        d = (x_adv - x).flatten(1).norm(dim=1)
        s = (predict(model, x_adv) != y) & ok
        found[name] = torch.where(s, d, torch.full_like(d, float("inf")))[ok]
        print(
            f"{name:<28} success {s[ok].float().mean():.4f}  median {d[s].median():.4f}  "
            f"mean {d[s].mean():.4f}  {seconds:.1f} s",
            flush=True,
        )

    for name, kw in variants.items():
        start = time.perf_counter()
        attack = CWL2(
            ThreatModel("l2"),
            binary_search_steps=9,
            steps=args.steps,
            step_size=0.1,
            batch_size=500,
            **kw,  # type: ignore[arg-type]
        )
        report(name, attack(model, x, y).x_adv, time.perf_counter() - start)
    start = time.perf_counter()
    report("foolbox", mn._foolbox(mn._fb_cw)(model, x, y, 500), time.perf_counter() - start)
    for name in variants:
        r = found[name] / found["foolbox"]
        r = r[torch.isfinite(r)]
        print(f"{name}: median per-sample ratio to Foolbox {float(r.median()):.4f}")


if __name__ == "__main__":
    main()
