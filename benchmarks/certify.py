"""Certification of the bundled MLP: bounds, exact MILP and PGD side by side (issue 8).

On the first N mnist5k test images (default 1000) and L∞ radii 0.01, 0.02, 0.05, for
``zoo:mnist_mlp`` (784-100-100-10): certified accuracy by IBP, CROWN, progressive tightening
(IA → CROWN → LP) and the MILP (``advex.certify.mip.verify``, HiGHS, 60 s per sample), PGD
robust accuracy, the share of samples the MILP decides, disagreements (certified yet broken: must
be 0) and median seconds per sample. Then, on the first ``--plain-n`` samples, the MILP with
plain interval-arithmetic big-M bounds against the MILP with progressive tightening: the
speed-up of tightening.

Every sample's record is appended to OUT/<method>-<eps>/samples-LO-HI/samples.jsonl as it is
decided; a rerun continues where an interrupted one stopped (delete OUT to start over).
``--workers K`` splits the samples over K single-threaded processes (seconds per sample stay
comparable).

    python benchmarks/certify.py [--n 1000] [--eps 0.01,0.02,0.05] [--plain-n 100] [--workers 1]

Targets (issue 8): MIP decides ≥ 99 % of samples within 60 s each, zero disagreements.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import time
from pathlib import Path

import torch

from advex import data, zoo
from advex.certify.runner import CertifyRun, certify_dataset


def _part(job):
    """One worker's share: samples [lo, hi) of one (method, eps) setting, resumable."""
    folder, lo, hi, eps, method, mip_bounds, timeout, n = job
    torch.set_num_threads(1)
    clf = zoo.load("mnist_mlp")
    x, y = data.load("mnist5k", split="test")
    x, y = x[:n][lo:hi], y[:n][lo:hi]
    run = certify_dataset(
        clf,
        x,
        y,
        [eps],
        norm="linf",
        method=method,
        out=folder,
        resume=True,
        time_limit=timeout,
        mip_bounds=mip_bounds,
        seed=0,
    )
    return run.records


def _run(n, eps, method, out, args, pool, mip_bounds=None):
    """Certified accuracy etc. of one setting over the first n samples, split over workers
    into contiguous parts (each saved in its own folder, so a rerun resumes)."""
    folder = out / f"{method}{'-' + mip_bounds if mip_bounds else ''}-{eps:g}"
    bounds = [round(k * n / args.workers) for k in range(args.workers + 1)]
    jobs = [
        (folder / f"samples-{lo}-{hi}", lo, hi, eps, method, mip_bounds, args.timeout, n)
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]
    start = time.perf_counter()
    parts = pool.map(_part, jobs) if pool is not None else [_part(j) for j in jobs]
    records = [r for part in parts for r in part]
    (row,) = CertifyRun(method, "linf", records).summary()
    row["total_seconds"] = sum(float(r["seconds"]) for r in records)
    row["wall"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", default="0.01,0.02,0.05")
    parser.add_argument("--plain-n", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--methods", default="ibp,crown,progressive,mip")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-certify"))
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pool = mp.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    methods = [m for m in args.methods.split(",") if m]
    print(f"mnist_mlp, {args.n} mnist5k test images, L∞; MILP time limit {args.timeout:g} s/sample")
    header = f"{'eps':>5} {'method':<12} {'certified':>9} {'PGD acc':>7} {'decided':>7} "
    header += f"{'unknown':>7} {'disagree':>8} {'median s':>9} {'max s':>7}"
    print(header)
    for eps in (float(e) for e in args.eps.split(",")):
        for method in methods:
            row = _run(args.n, eps, method, args.out, args, pool)
            print(
                f"{eps:>5g} {method:<12} {row['certified_accuracy']:>9.1%} "
                f"{row['attack_accuracy']:>7.1%} {row['decided']:>7.1%} {row['unknown']:>7d} "
                f"{row['disagreements']:>8d} {row['median_seconds']:>9.4f} "
                f"{row['max_seconds']:>7.2f}",
                flush=True,
            )
    if args.plain_n:
        print(f"\nMILP big-M bounds on the first {args.plain_n} samples: plain IA vs progressive")
        print(f"{'eps':>5} {'IA→MIP s':>9} {'prog→MIP s':>10} {'speed-up':>8} {'IA unknown':>10}")
        for eps in (float(e) for e in args.eps.split(",")):
            plain = _run(args.plain_n, eps, "mip", args.out / "plain", args, pool, "ibp")
            prog = _run(args.plain_n, eps, "mip", args.out / "plain", args, pool, "progressive")
            speed = plain["total_seconds"] / max(prog["total_seconds"], 1e-9)
            print(
                f"{eps:>5g} {plain['total_seconds']:>9.1f} {prog['total_seconds']:>10.1f} "
                f"{speed:>7.2f}× {plain['unknown']:>10d}",
                flush=True,
            )


if __name__ == "__main__":
    main()
