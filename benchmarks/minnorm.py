"""Minimum-norm L2 attacks on the bundled MNIST models: advex against its peers, side by side.

For each model and each attack family — DeepFool, Carlini–Wagner L2 and FMN L2 — this runs advex
and every installed peer library that has the same attack, on the same first ``--n`` images of the
mnist5k test split, in batches of ``--batch-size`` with ``--threads`` CPU threads, and prints

* success rate among the clean-correct images (a fresh forward pass here on each library's
  returned points; points outside [0, 1] are reported and count as failures),
* median and mean ‖δ‖₂ over the successful ones, and the median with failures counted as ∞
  (a fair figure when success rates differ),
* seconds, and advex's time as a fraction of the fastest peer's (a run shorter than
  ``--repeat-below`` seconds is timed ``--repeats`` times, interleaved across the libraries, and
  the fastest time counts, for every library alike: on a shared machine single short timings
  drift by tens of percent),

then the issue's verdicts: success ≥ 99.5 %, median L2 ≤ the best peer's (≤ 1.00×; medians with
failures counted as ∞, so a library that gives up on hard samples does not look closer), wall
time ≤ 1.0× the fastest peer implementation of the same attack (``DIFFERENT`` names the peers
whose attack differs: torchattacks' C&W). Settings (the same iteration budget wherever the
algorithms allow):

* DeepFool: 50 steps, overshoot 0.02, all 10 classes as candidates (advex, Foolbox
  ``L2DeepFoolAttack``, torchattacks ``DeepFool``, ART ``DeepFool``);
* C&W L2: ``--cw-search`` binary-search steps × ``--cw-steps`` Adam steps (9 × 300, the most
  iterations per sample; the paper allows 9 × 10000, advex's default is 9 × 1000), Adam
  learning rate ``--cw-lr`` (0.1: the paper's 0.01 is tuned for up to 10000 steps per run; at
  a few hundred steps it leaves many MNIST images unbroken in every library, because pixels at
  0 or 1 sit where tanh is flat), κ = 0, c₀ = 1e-3, abort early (advex ``CWL2`` with its
  defaults, Foolbox ``L2CarliniWagnerAttack``; ART ``CarliniL2Method`` only with ``--art-cw``:
  it runs in numpy at about 3 ms per image and step). torchattacks ``CW`` has no binary search
  over c (the flaw the issue names), so it is a different attack: it gets the whole budget
  (search × steps) at c = 1, is shown, and is left out of the C&W time verdict. Foolbox
  returns an all-zero image where C&W found nothing; that placeholder counts as a failure;
* FMN L2: ``--fmn-steps`` steps (advex ``FMN``, Foolbox ``L2FMNAttack``; the other peers have none).

Run: ``make bench-minnorm`` (or ``python benchmarks/minnorm.py --help``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from advex import ThreatModel, data, zoo
from common import art_classifier, batches, predict, split_available

Runner = Callable[[nn.Module, Tensor, Tensor, int], Tensor]


@dataclass
class Settings:
    deepfool_steps: int = 50
    overshoot: float = 0.02
    cw_search: int = 9
    cw_steps: int = 300
    cw_lr: float = 0.1
    fmn_steps: int = 100


S = Settings()


# ----- advex ------------------------------------------------------------------------------------
def advex_deepfool(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    from advex.attacks import DeepFool

    attack = DeepFool(
        ThreatModel("l2"),
        steps=S.deepfool_steps,
        overshoot=S.overshoot,
        candidates=10,
        batch_size=bs,
    )
    return attack(model, x, y).x_adv


def advex_cw(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    from advex.attacks import CWL2

    attack = CWL2(
        ThreatModel("l2"),
        binary_search_steps=S.cw_search,
        steps=S.cw_steps,
        step_size=S.cw_lr,
        batch_size=bs,
    )
    return attack(model, x, y).x_adv


def advex_fmn(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    from advex.attacks import FMN

    return FMN(ThreatModel("l2"), steps=S.fmn_steps, batch_size=bs)(model, x, y).x_adv


# ----- Foolbox ----------------------------------------------------------------------------------
def _foolbox(attack_of: Callable[[], object]) -> Runner:
    def run(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = attack_of()
        outs = []
        for xb, yb in batches(x, y, bs):
            _, clipped, _ = attack(fmodel, xb, yb, epsilons=None)  # type: ignore[operator]
            # Foolbox's C&W returns an all-zero image where it found nothing; that placeholder
            # is not a result of the attack, so it counts as a failure (x returned unchanged).
            empty = clipped.flatten(1).abs().amax(1) == 0
            outs.append(torch.where(empty.reshape(-1, 1, 1, 1), xb, clipped))
        return torch.cat(outs)

    return run


def _fb_deepfool() -> object:
    import foolbox as fb

    return fb.attacks.L2DeepFoolAttack(steps=S.deepfool_steps, candidates=10, overshoot=S.overshoot)


def _fb_cw() -> object:
    import foolbox as fb

    return fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=S.cw_search,
        steps=S.cw_steps,
        stepsize=S.cw_lr,
        confidence=0,
        initial_const=1e-3,
        abort_early=True,
    )


def _fb_fmn() -> object:
    import foolbox as fb

    return fb.attacks.L2FMNAttack(steps=S.fmn_steps)


# ----- torchattacks -----------------------------------------------------------------------------
def ta_deepfool(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    import torchattacks

    attack = torchattacks.DeepFool(model, steps=S.deepfool_steps, overshoot=S.overshoot)
    return torch.cat([attack(xb, yb) for xb, yb in batches(x, y, bs)])


def ta_cw(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    import torchattacks

    attack = torchattacks.CW(model, c=1, kappa=0, steps=S.cw_search * S.cw_steps, lr=S.cw_lr)
    return torch.cat([attack(xb, yb) for xb, yb in batches(x, y, bs)])


# ----- ART --------------------------------------------------------------------------------------
def art_deepfool(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    from art.attacks.evasion import DeepFool

    attack = DeepFool(
        art_classifier(model, x),
        max_iter=S.deepfool_steps,
        epsilon=S.overshoot,
        nb_grads=10,
        batch_size=bs,
        verbose=False,
    )
    return torch.from_numpy(attack.generate(x=x.numpy())).to(x.dtype)


def art_cw(model: nn.Module, x: Tensor, y: Tensor, bs: int) -> Tensor:
    from art.attacks.evasion import CarliniL2Method

    attack = CarliniL2Method(
        art_classifier(model, x),
        confidence=0.0,
        learning_rate=S.cw_lr,
        binary_search_steps=S.cw_search,
        max_iter=S.cw_steps,
        initial_const=1e-3,
        batch_size=bs,
        verbose=False,
    )
    onehot = np.eye(10, dtype=np.float32)[y.numpy()]
    return torch.from_numpy(attack.generate(x=x.numpy(), y=onehot)).to(x.dtype)


ATTACKS: dict[str, dict[str, Runner]] = {
    "deepfool": {
        "advex": advex_deepfool,
        "foolbox": _foolbox(_fb_deepfool),
        "torchattacks": ta_deepfool,
        "art": art_deepfool,
    },
    "cw_l2": {
        "advex": advex_cw,
        "foolbox": _foolbox(_fb_cw),
        "torchattacks": ta_cw,
        "art": art_cw,
    },
    "fmn_l2": {"advex": advex_fmn, "foolbox": _foolbox(_fb_fmn)},
}


#: Peers whose implementation is a different attack than the name says: shown, timed, and left
#: out of the time verdict (never out of the distance verdict).
DIFFERENT: dict[str, dict[str, str]] = {
    "deepfool": {},
    "cw_l2": {"torchattacks": "has no binary search over c (one run at c = 1)"},
    "fmn_l2": {},
}


@dataclass
class Row:
    success: float
    median: float
    mean: float
    median_inf: float
    seconds: float
    note: str


def measure(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, seconds: float) -> Row:
    """Success and L2 distances of ``x_adv``, recomputed here, over the clean-correct images."""
    correct = predict(model, x) == y
    in_box = (x_adv.flatten(1).amin(1) >= 0) & (x_adv.flatten(1).amax(1) <= 1)
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    ok = (predict(model, torch.nan_to_num(x_adv)) != y) & in_box & finite
    dist = (x_adv - x).flatten(1).double().norm(dim=1)
    won = ok[correct]
    d = dist[correct]
    notes = []
    if not bool(in_box.all()):
        notes.append(f"{int((~in_box).sum())} outside [0,1]")
    if not bool(finite.all()):
        notes.append(f"{int((~finite).sum())} NaN/Inf")
    wins = d[won].numpy()
    with_inf = np.where(won.numpy(), d.numpy(), math.inf)
    return Row(
        success=float(won.double().mean()),
        median=float(np.median(wins)) if len(wins) else math.nan,
        mean=float(wins.mean()) if len(wins) else math.nan,
        median_inf=float(np.median(with_inf)),
        seconds=seconds,
        note="; ".join(notes) or "valid",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="mnist_cnn,mnist_cnn_pgd,mnist_mlp")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default="foolbox,torchattacks,art")
    ap.add_argument("--cw-search", type=int, default=S.cw_search)
    ap.add_argument("--cw-steps", type=int, default=S.cw_steps)
    ap.add_argument("--cw-lr", type=float, default=S.cw_lr)
    ap.add_argument("--art-cw", action="store_true", help="also run ART's (slow) C&W L2")
    ap.add_argument("--fmn-steps", type=int, default=S.fmn_steps)
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="time runs shorter than --repeat-below seconds this many times; keep the fastest",
    )
    ap.add_argument("--repeat-below", type=float, default=10.0)
    args = ap.parse_args()
    S.cw_search, S.cw_steps, S.cw_lr = args.cw_search, args.cw_steps, args.cw_lr
    S.fmn_steps = args.fmn_steps
    torch.set_num_threads(args.threads)
    x, y = data.load("mnist5k", split="test")
    x, y = x[: args.n], y[: args.n]
    peers, _ = split_available([p for p in args.peers.split(",") if p])
    print(
        f"{len(x)} mnist5k test images, batch {args.batch_size}, {args.threads} threads; "
        f"DeepFool {S.deepfool_steps} steps overshoot {S.overshoot}; C&W {S.cw_search}×"
        f"{S.cw_steps} lr {S.cw_lr}; FMN {S.fmn_steps} steps"
    )
    verdicts: list[str] = []
    for name in args.models.split(","):
        model = zoo.load(name).module.eval()
        for attack in args.attacks.split(","):
            runners = {k: f for k, f in ATTACKS[attack].items() if k == "advex" or k in peers}
            if attack == "cw_l2" and not args.art_cw:
                runners.pop("art", None)
            rows: dict[str, Row] = {}
            # advex runs in the middle so that a drift of the machine's speed is shared.
            order = list(runners)
            order = [*order[1:2], "advex", *order[2:]] if len(order) > 1 else order
            # Short runs are timed --repeats times, interleaved across the libraries, and each
            # library keeps its fastest time (timeit's rule: the minimum is the run least
            # disturbed by the machine); the points measured are the first run's.
            outs: dict[str, Tensor] = {}
            times: dict[str, list[float]] = {lib: [] for lib in order}
            for rep in range(max(1, args.repeats)):
                for lib in order:
                    if rep and min(times[lib]) > args.repeat_below:
                        continue
                    torch.manual_seed(0)
                    start = time.perf_counter()
                    out = runners[lib](model, x, y, args.batch_size)
                    times[lib].append(time.perf_counter() - start)
                    outs.setdefault(lib, out.detach())
            for lib in order:
                rows[lib] = measure(model, x, y, outs[lib], min(times[lib]))
            print(f"\n== {name} · {attack} ==")
            print(
                f"{'library':<14}{'success':>9}{'median L2':>11}{'mean L2':>9}"
                f"{'median (fail=∞)':>17}{'seconds':>9}  validity"
            )
            for lib, r in rows.items():
                print(
                    f"{lib:<14}{100 * r.success:8.2f}%{r.median:11.4f}{r.mean:9.4f}"
                    f"{r.median_inf:17.4f}{r.seconds:9.2f}  {r.note}"
                )
            ours = rows["advex"]
            others = [r for k, r in rows.items() if k != "advex"]
            verdicts.append(
                f"{name} {attack}: success {100 * ours.success:.2f}% (target ≥ 99.5%): "
                f"{'PASS' if ours.success >= 0.995 else 'FAIL'}"
            )
            if others:
                # medians with failures counted as ∞: the fair figure when success rates differ
                finite = [r.median_inf for r in others if math.isfinite(r.median_inf)]
                if finite:
                    ratio = ours.median_inf / min(finite)
                    verdicts.append(
                        f"{name} {attack}: median L2 (fail=∞) advex/best peer {ratio:.4f}× "
                        f"(target ≤ 1.00×): {'PASS' if ratio <= 1.0 else 'FAIL'}"
                    )
                same = {
                    k: r for k, r in rows.items() if k != "advex" and k not in DIFFERENT[attack]
                }
                if same:
                    peer = min(same, key=lambda k: same[k].seconds)
                    t = ours.seconds / same[peer].seconds
                    verdicts.append(
                        f"{name} {attack}: time advex/fastest peer of the same attack ({peer}) "
                        f"{t:.2f}× (target ≤ 1.0×): {'PASS' if t <= 1.0 else 'FAIL'}"
                    )
                for k, why in DIFFERENT[attack].items():
                    if k in rows:
                        t = ours.seconds / rows[k].seconds
                        verdicts.append(
                            f"{name} {attack}: (not judged) time advex/{k} {t:.2f}×: {k} {why}"
                        )
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
