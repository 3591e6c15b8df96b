"""Exact verification and minimal adversarial distortion as mixed-integer linear programs.

With the network written exactly as a MILP over an input domain D (``milp_encoding``: big-M
ReLUs and max pools from precomputed bounds, Tjeng et al. 2019), three questions become
optimization problems solved by HiGHS:

* ``verify`` — is every x ∈ D = {‖x − x₀‖_p ≤ ε} ∩ [lo, hi] (p = ∞ or 1) classified y? Yes iff

      min_{x ∈ D} z_y(x) − z_j(x) > 0   for every j ≠ y,

  one MILP per class j (the misclassification disjuncts of ``spec.misclassification``), weakest
  bound first, the time limit shared across them. Per sample: the clean input (a mistake is its
  own counterexample) → PGD as a falsifier → bounds on every layer (``bounds.layer_bounds``) and
  on the margins through the last layer, classes whose bound is already > 0 skipped (all of
  them: robust "by bounds") → the LP relaxation of each remaining class's MILP (one
  warm-started LP, its bound rebuilt from the row prices by weak duality, Neumaier and
  Shcherbina 2004) → for the classes still open, rounds of Anderson et al.'s cuts
  (``cuts.ReluCuts``, the ideal formulation of each ReLU over its input box) added to that LP,
  and a signed-gradient descent from the LP's minimizer, which is where counterexamples that
  PGD misses tend to lie → the MILPs of the classes still open, on the model without the
  cuts (HiGHS searched longer with them on the MNIST MLP), each stopped by a callback as soon
  as its dual bound is > 0 (proved for j) or it holds an incumbent ≤ 0 (a counterexample
  candidate). On the bundled MNIST MLP the LP step decides most samples in a tenth of the time
  HiGHS's MIP needs to reach its first callback (presolve and root cuts); at ε = 0.05 the cut
  rounds prove many of the classes the plain LP leaves open, before any MILP.
* ``solve_property`` — the VNN-LIB question ∃ x ∈ [l, u] with f(x) ∈ ∪_d {z : A_d z ≤ b_d}? Per
  disjunct, min t s.t. t ≥ (A_d z − b_d)_m for every row m: "sat" iff the minimum is ≤ 0.
  ``verify`` is this machinery with the misclassification disjuncts (one row each, so t is the
  margin itself).
* ``minimal_distortion`` — d* = min {‖x − x₀‖ : x ∈ [lo, hi], z_j(x) ≥ z_y(x) for some j ≠ y}.
  Solved as one MILP per class j, min ‖x − x₀‖ s.t. z_y − z_j ≤ 0, with the best distance so far
  as HiGHS's objective cutoff. This beats one MILP with a binary per class: classes whose margin
  bound over the ball of radius ``upper`` (an attack's distance) is > 0 are dropped without a
  solve, every MILP keeps a single linear margin row (the disjunction would need big-M rows on
  the margins, whose M is loose), each class's LP relaxation gives a first certified lower
  bound (and drops the classes whose bound already exceeds the best distance), and the cutoff
  from earlier classes prunes the later ones whole. The big-M bounds come from the ball of
  radius ``upper`` ∩ box. L∞ (min e, x₀ − e ≤ x ≤
  x₀ + e) and L1 (min Σ t, t ≥ |x − x₀|) are MILPs; L2 (min s, s ≥ ‖x − x₀‖₂²) goes to SCIP
  (pyscipopt) as a mixed-integer quadratically constrained program when it is installed, and is
  otherwise the interval [d*_∞, upper] (‖δ‖₂ ≥ ‖δ‖_∞).

Soundness. A claim "robust"/"unsat" comes only from a proof: a margin bound, an LP bound by
weak duality (valid for any row prices, so solver tolerances cannot break it), or the MILP's
dual bound (whatever stopped the search: optimality, our interrupt, a limit; for a model
without binaries, the weak-duality bound), each above a floating-point safety margin
``SAFETY``·(1 + s), s the largest |bound| of the objective over D. Early-stopping MILPs run with
an objective cutoff c a little above that margin, so "infeasible" there means min ≥ c; the
model is first checked to hold the domain's centre (bounds that exclude it are unsound), so
that infeasibility is never numerical failure in disguise. A time limit or a solver error
proves nothing: the answer is "unknown", with a ``NumericalTroubleWarning`` where the solver
or the bounds misbehaved. Every counterexample is clipped into the domain and re-checked by a
float64 forward pass of the original model and of the ``Network``; one that fails is repaired
by a short signed-gradient descent from it, else dropped. Distances are recomputed from the
returned points.

Tjeng, Xiao, Tedrake. Evaluating Robustness of Neural Networks with Mixed Integer Programming.
ICLR 2019. arXiv:1711.07356

Differences from the paper: HiGHS (open source) instead of Gurobi; bounds from
``advex.certify.bounds`` (interval, CROWN, LP, progressive) instead of per-neuron LP/MIP
tightening inside the verifier; a PGD falsifier, an LP screen tightened by cuts and per-class
MILPs with early stop by callback; minimal distortion per class with a cutoff (see above).

Anderson, Huchette, Ma, Tjandraatmadja, Vielma. Strong mixed-integer programming formulations
for trained neural networks. Math. Prog. 183, 2020. arXiv:1811.01988

Neumaier, Shcherbina. Safe bounds in linear and mixed-integer linear programming. Math. Prog.
99, 2004.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advex.certify.bounds import METHODS as _BOUND_METHODS
from advex.certify.bounds import LayerBounds
from advex.certify.bounds import layer_bounds as compute_layer_bounds
from advex.certify.cuts import CutPool, ReluCuts
from advex.certify.domain import InputDomain
from advex.certify.highs import silence_banner
from advex.certify.milp_encoding import (
    Milp,
    MilpBuilder,
    NetworkColumns,
    encode_network,
)
from advex.certify.network import Dense, Network, Scale
from advex.certify.spec import Halfspaces, Property, misclassification
from advex.norms import lp_norm

__all__ = [
    "SAFETY",
    "Distortion",
    "NumericalTroubleWarning",
    "PropertyResult",
    "Verification",
    "minimal_distortion",
    "solve_property",
    "verify",
]

#: Relative floating-point safety margin: a bound proves "> 0" only when it exceeds
#: SAFETY·(1 + s), s the largest |bound| of the objective over the domain.
SAFETY = 1e-6
#: Largest violation of the MILP's rows by a solution before ``NumericalTroubleWarning``.
VIOLATION_TOLERANCE = 1e-5
VERIFY_NORMS = ("linf", "l1")
DISTANCE_NORMS = ("linf", "l1", "l2")
#: At most this fraction of a sample's time limit goes to the LP steps of the layer bounds.
BOUNDS_SHARE = 0.5
#: The MILP's objective cutoff, in safety margins (see ``_solve_disjunct``).
CUTOFF = 10.0
#: HiGHS settings of the early-stopping MILPs: primal heuristics (sub-MIPs, feasibility jump)
#: off. They look for solutions below the cutoff, which PGD has already looked for, and took
#: 60–85% of the time of the hard MNIST samples at ε = 0.05 (with the cutoff: 20–23 s → 3 s
#: per class).
PROOF_SETTINGS: dict[str, Any] = {
    "mip_heuristic_effort": 0.0,
    "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False,
    "mip_heuristic_run_feasibility_jump": False,
}
#: Share of a sample's remaining time (after the LP step) that the cut rounds may use, rounds
#: per disjunct at most, cuts per round at most, and the least gain of a round, relative to the
#: bound, for another round (``_cut_screen``).
CUT_SHARE = 0.25
CUT_ROUNDS = 10
CUT_LIMIT = 200
CUT_STALL = 0.01
#: PGD falsifier settings (steps, restarts) run before any bound or MILP.
FALSIFIER = (40, 2)

Array = np.ndarray[Any, Any]


class NumericalTroubleWarning(UserWarning):
    """The MILP solver reported an error status, claimed infeasibility of a model that has a
    feasible point, or returned a solution that violates the model or disagrees with the
    network's forward pass; or the layer bounds exclude the domain's centre. The sample's
    answer is "unknown" unless a re-checked counterexample or a proof by bounds decides it."""


# ---------------------------------------------------------------------------------- results


@dataclass
class Verification:
    """What ``verify`` returns, per sample.

    Attributes:
        status: "robust" (certified), "not robust" (re-checked counterexample) or "unknown".
        robust: (B,) bool, status == "robust".
        counterexample: (B, ...) float64 inputs, re-checked; NaN rows where there is none.
        margin_lower: (B,) certified lower bound on min_{x∈D} min_{j≠y} z_y − z_j (NaN where
            the sample was decided before any bound was computed).
        margin_adv: (B,) the original model's margin z_y − max_{j≠y} z_j at the counterexample
            (< 0; NaN where there is none).
        decided_by: the step that decided: "clean", "falsifier", "bounds" (interval margins),
            "lp" (LP relaxations, tightened by cuts; or a counterexample found by descent from
            an LP minimizer), "milp", or "" (unknown).
        seconds: (B,) wall time per sample (an equal share of the batched clean check and PGD,
            plus the sample's own bounds and MILPs).
        unstable: (B,) ReLUs left undecided by the bounds (binaries of the MILP); −1 where no
            bounds were computed.
        eps, norm, bounds_method: the question asked and the bounds used.
    """

    status: list[str]
    robust: Tensor
    counterexample: Tensor
    margin_lower: Tensor
    margin_adv: Tensor
    decided_by: list[str]
    seconds: Tensor
    unstable: Tensor
    eps: float
    norm: str
    bounds_method: str

    def __len__(self) -> int:
        return len(self.status)

    @property
    def certified_accuracy(self) -> float:
        """Fraction of samples certified robust."""
        return float(self.robust.double().mean()) if len(self) else 0.0

    @property
    def decided_fraction(self) -> float:
        """Fraction of samples with a definite answer (robust or not robust)."""
        return sum(s != "unknown" for s in self.status) / len(self) if len(self) else 0.0


@dataclass
class Distortion:
    """What ``minimal_distortion`` returns, per sample.

    Attributes:
        lower: (B,) certified lower bound on the minimal adversarial distance d*.
        upper: (B,) distance of ``x_adv`` (recomputed from it); inf where none was found.
        exact: (B,) bool, upper − lower ≤ tolerance·upper (d* known to that precision).
        x_adv: (B, ...) float64, misclassified (re-checked), inside the box; NaN rows if none.
        seconds: (B,) wall time per sample (with an equal share of the batched attack).
        unstable: (B,) ReLUs undecided on the ball of radius ``upper`` (−1: none computed).
        norm, tolerance: the distance and the relative tolerance of ``exact``.
        solver: per sample, what produced the bounds: "clean", "highs", "scip", "interval"
            (L2 without SCIP), "none" (no MILP needed).
    """

    lower: Tensor
    upper: Tensor
    exact: Tensor
    x_adv: Tensor
    seconds: Tensor
    unstable: Tensor
    norm: str
    tolerance: float
    solver: list[str]

    def __len__(self) -> int:
        return int(self.lower.shape[0])


@dataclass
class PropertyResult:
    """What ``solve_property`` returns.

    Attributes:
        status: "sat" (a counterexample exists; re-checked with ``Property.violated_by``),
            "unsat" (proven: no input in the box reaches an unsafe output) or "unknown".
        counterexample: the input x (n,) float64 of a "sat" answer, else None.
        outputs: the network's outputs f(x) (K,) float64 at the counterexample, else None.
        lower: certified lower bound on min over disjuncts of min_x max_m (A z − b)_m
            (> 0 for "unsat").
        decided_by: "falsifier", "bounds", "lp", "milp" or "" (unknown).
        seconds: wall time.
    """

    status: str
    counterexample: Tensor | None
    outputs: Tensor | None
    lower: float
    decided_by: str
    seconds: float


# ------------------------------------------------------------------------ model handling


class _NetworkModule(nn.Module):
    """A ``Network`` as an ``nn.Module`` (float64 inside, the input's dtype out) for attacks."""

    def __init__(self, net: Network) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward(x).to(x.dtype)


@dataclass
class _Target:
    """The model three ways: the ``Network`` (encoded), a float64 reference copy of the
    original (re-checks) and the original (attacks)."""

    net: Network
    reference: nn.Module | None
    attackable: nn.Module
    input_shape: tuple[int, ...]

    def margins(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """min_{j≠y} z_y − z_j (B,) at x (B, n) float64, by the reference and by the Network."""
        by_net = _margin(self.net.forward(x), y)
        if self.reference is None:
            return by_net, by_net
        with torch.no_grad():
            z = self.reference(x.reshape(x.shape[0], *self.input_shape))
        return _margin(z.to(torch.float64), y), by_net

    def misclassified(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(both models give a margin < 0 (B,) bool, the reference's margin (B,))."""
        ref, net = self.margins(x, y)
        return (ref < 0) & (net < 0), ref


def _margin(z: Tensor, y: Tensor) -> Tensor:
    """z_y − max_{j≠y} z_j for logits (B, K)."""
    own = z.gather(1, y.reshape(-1, 1)).squeeze(1)
    other = z.scatter(1, y.reshape(-1, 1), -torch.inf).amax(dim=1)
    return own - other


def _target(model: Any, x: Tensor) -> _Target:
    shape = tuple(int(s) for s in x.shape[1:])
    if isinstance(model, Network):
        if model.input_size != int(np.prod(shape)):
            raise ValueError(f"x: {shape} inputs for a network of {model.input_size} inputs")
        return _Target(model, None, _NetworkModule(model), shape)
    from advex.model import as_classifier

    clf = as_classifier(model)
    reference = copy.deepcopy(clf).cpu().double().eval()
    net = Network.from_module(reference, input_shape=shape)
    return _Target(net, reference, clf, shape)


# ----------------------------------------------------------------------------- the solver


@dataclass
class _Run:
    """One HiGHS solve: model status name, dual bound, incumbent value and point (or None)."""

    status: str
    dual: float
    value: float
    solution: Array | None
    seconds: float


_ERROR_STATUSES = {
    "kNotset",
    "kLoadError",
    "kModelError",
    "kPresolveError",
    "kSolveError",
    "kPostsolveError",
    "kModelEmpty",
    "kUnknown",
    "kMemoryLimit",
    "kUnboundedOrInfeasible",
    "kUnbounded",
}
#: Statuses after which HiGHS's dual bound is a valid bound of the search it ran.
_BOUND_STATUSES = {
    "kOptimal",
    "kInterrupt",
    "kHighsInterrupt",
    "kTimeLimit",
    "kIterationLimit",
    "kSolutionLimit",
    "kObjectiveBound",
    "kObjectiveTarget",
}


def _solve(
    milp: Milp,
    cost: Array,
    offset: float,
    *,
    time_limit: float,
    stop_above: float | None = None,
    stop_below: float | None = None,
    cutoff: float | None = None,
    rel_gap: float | None = None,
    settings: dict[str, Any] | None = None,
) -> _Run:
    """min cost·v + offset over ``milp`` with HiGHS (one thread), interrupted by callback once
    the dual bound exceeds ``stop_above`` or an incumbent reaches ``stop_below``; ``cutoff``
    discards solutions worse than it (HiGHS's objective_bound); ``settings``: more options."""
    options: dict[str, Any] = {"threads": 1, "time_limit": max(float(time_limit), 1e-3)}
    options.update(settings or {})
    if cutoff is not None and math.isfinite(cutoff):
        options["objective_bound"] = float(cutoff)
    if rel_gap is not None:
        options["mip_rel_gap"] = float(rel_gap)
        options["mip_abs_gap"] = 1e-9
    h = milp.highs(cost, offset, options)
    if stop_above is not None or stop_below is not None:
        above = math.inf if stop_above is None else stop_above
        below = -math.inf if stop_below is None else stop_below

        def interrupt(event: Any) -> None:
            out = event.data_out
            if out.mip_dual_bound > above or out.mip_primal_bound <= below:
                event.interrupt()

        h.cbMipInterrupt.subscribe(interrupt)
    start = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - start
    status = h.modelStatusToString(h.getModelStatus())
    name = _status_name(h)
    info = h.getInfo()
    solution = None
    if int(info.primal_solution_status) == 2:
        solution = np.asarray(h.getSolution().col_value, dtype=np.float64)
        violation = milp.violation(solution)
        if violation > VIOLATION_TOLERANCE:
            warnings.warn(
                f"HiGHS returned a solution that violates the model by {violation:.2e}",
                NumericalTroubleWarning,
                stacklevel=3,
            )
    if name in _ERROR_STATUSES:
        warnings.warn(
            f"HiGHS stopped with status {name} ({status}); the answer is left unknown",
            NumericalTroubleWarning,
            stacklevel=3,
        )
    dual = float(info.mip_dual_bound) if name in _BOUND_STATUSES else -math.inf
    if not milp.integer.any():
        # HiGHS solved an LP (every ReLU stable): no MIP dual bound; rebuild one by duality.
        dual = -math.inf
        if name == "kOptimal":
            dual = _dual_bound(milp, cost, offset, np.asarray(h.getSolution().row_dual))
    value = float(info.objective_function_value) if solution is not None else math.inf
    h.clear()
    return _Run(name, dual, value, solution, seconds)


def _status_name(h: Any) -> str:
    return str(h.getModelStatus()).rsplit(".", 1)[-1]


def _safety(lo: float, hi: float) -> float:
    return SAFETY * (1.0 + max(abs(lo), abs(hi) if math.isfinite(hi) else 0.0))


# ------------------------------------------------------------------ disjuncts (verify/sat)


@dataclass
class _Problem:
    """One input domain with the network encoded over it.

    ``extract`` reads the input x (n,) from a MILP solution, ``project`` clips rows (B, n) into
    the domain, ``accept`` re-checks a counterexample x (n,), ``start`` is where descents start.
    """

    net: Network
    bounds: LayerBounds
    builder: MilpBuilder
    cols: NetworkColumns
    x_cols: Array
    project: Callable[[Tensor], Tensor]
    accept: Callable[[Tensor], bool]
    width: float

    centre: Array | None = None
    _base: Milp | None = None

    def feasible(self) -> bool:
        """Whether the model holds the domain's centre (``centre``: every column's value
        there): bounds that exclude it are unsound, and the answer must stay unknown."""
        if self.centre is None:
            return True
        milp = self.base()
        scale = 1.0 + float(np.abs(self.centre).max(initial=0.0))
        violation = milp.violation(self.centre)
        if violation <= 1e-7 * scale:
            return True
        warnings.warn(
            f"the layer bounds exclude the domain's centre (the encoding is violated by "
            f"{violation:.2e} there): unsound bounds, the answer is left unknown",
            NumericalTroubleWarning,
            stacklevel=4,
        )
        return False

    def extract(self, solution: Array) -> Tensor:
        return self.project(torch.as_tensor(solution[self.x_cols], dtype=torch.float64)[None])[0]

    def base(self) -> Milp:
        """The network's model alone (built once)."""
        if self._base is None:
            self._base = self.builder.build()
        return self._base


@dataclass
class _Decision:
    status: str  # "unsat" | "sat" | "unknown"
    lower: float
    x: Tensor | None
    decided_by: str


def _spec_range(net: Network, bounds: LayerBounds, d: Halfspaces) -> tuple[Tensor, Tensor]:
    """Interval bounds (m,) on the rows of A·z − b over the domain, through the last layer."""
    last = net.layers[-1]
    weight = last.backward(d.A)  # type: ignore[attr-defined]
    bias = d.A @ last.bias - d.b  # type: ignore[attr-defined]
    lo, hi = Dense(weight, bias).interval(bounds.lower[-2][:1], bounds.upper[-2][:1])
    return lo[0], hi[0]


def _descend(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    project: Callable[[Tensor], Tensor],
    step: float,
    steps: int = 50,
) -> tuple[Tensor, Tensor]:
    """Signed-gradient descent on ``objective`` (rows (B, n) → (B,)) from rows ``x``, projected
    after every step, step size annealed from ``step`` to step/100. Returns the best rows and
    their values."""
    best = x.clone()
    with torch.no_grad():
        best_val = objective(x)
    cur = x.clone()
    for k in range(steps):
        cur = cur.detach().requires_grad_(True)
        val = objective(cur)
        (grad,) = torch.autograd.grad(val.sum(), cur)
        with torch.no_grad():
            better = val < best_val
            best[better] = cur[better]
            best_val = torch.where(better, val, best_val)
            alpha = step * (1 - k / steps) + step / 100
            cur = project(cur - alpha * grad.sign())
    with torch.no_grad():
        val = objective(cur)
        better = val < best_val
        best[better] = cur[better]
        best_val = torch.where(better, val, best_val)
    return best.detach(), best_val.detach()


def _disjunct_objective(net: Network, d: Halfspaces) -> Callable[[Tensor], Tensor]:
    """x (B, n) ↦ max_m (A·f(x) − b)_m: ≤ 0 iff f(x) lies in the disjunct."""

    def value(x: Tensor) -> Tensor:
        return (net.forward(x) @ d.A.T - d.b).amax(dim=1)

    return value


_STEPS = ("bounds", "lp", "milp")


def _decide(
    problem: _Problem,
    disjuncts: Sequence[Halfspaces],
    deadline: float,
    exhaustive: bool = False,
) -> _Decision:
    """Unsat (every disjunct's min t proven > 0), sat (a re-checked counterexample) or unknown.

    Per disjunct, cheapest proof first: interval bounds through the last layer, then the LP
    relaxation of its MILP (one warm-started HiGHS LP for all single-row disjuncts; its bound
    is rebuilt from the row prices by weak duality, so solver tolerances cannot make it
    unsound), then that LP tightened by cut rounds (``_cut_screen``, at most ``CUT_SHARE`` of
    the time left) with a descent from its minimizer for a counterexample, then the MILP,
    disjuncts in order of their weakest bound, the deadline shared.

    ``exhaustive``: solve every disjunct's MILP to optimality (no early stop, no skip), so that
    ``lower`` is within the MILP's gap of the minimum; the counterexample kept is the one with
    the smallest t."""
    if not problem.feasible():
        return _Decision("unknown", -math.inf, None, "")
    ranges = [_spec_range(problem.net, problem.bounds, d) for d in disjuncts]
    lo_t = [float(lo.max()) for lo, _ in ranges]
    hi_t = [float(hi.max()) for _, hi in ranges]
    margins = [_safety(lo, hi) for lo, hi in zip(lo_t, hi_t, strict=True)]
    lowers = [lo - m for lo, m in zip(lo_t, margins, strict=True)]
    step = 0
    order = sorted(range(len(disjuncts)), key=lambda i: lo_t[i])
    models = {k: _disjunct_model(problem, disjuncts[k], lo_t[k], hi_t[k]) for k in order}
    status = "unsat"
    found: Tensor | None = None
    found_value = math.inf
    if not exhaustive:
        pending = [k for k in order if lowers[k] <= 0]
        if pending:
            step = 1
            relaxed = _lp_bounds([models[k] for k in pending], deadline)
            for k, value in zip(pending, relaxed, strict=True):
                lowers[k] = max(lowers[k], value - margins[k])
        pending = [k for k in pending if lowers[k] <= 0]
        if pending:
            cutter = ReluCuts(problem.cols, problem.base())
            budget = CUT_SHARE * (deadline - time.perf_counter())
            until = time.perf_counter() + budget
            for k in pending:
                bound, point = _cut_screen(*models[k], cutter, until)
                lowers[k] = max(lowers[k], bound - margins[k])
                if lowers[k] > 0 or point is None:
                    continue
                # The relaxation's minimizer is where a counterexample is most likely near.
                x = _falsify(problem, disjuncts[k], problem.extract(point))
                if x is not None:
                    return _Decision("sat", min(lowers), x, "lp")
    for k in sorted(order, key=lambda i: lowers[i]):
        if lowers[k] > 0 and not exhaustive:
            continue
        step = 2
        left = deadline - time.perf_counter()
        if left <= 0:
            status = "unknown" if lowers[k] <= 0 and status != "sat" else status
            continue
        milp, cost, offset = models[k]
        run, solved = _solve_disjunct(milp, cost, offset, left, margins[k], exhaustive)
        lowers[k] = max(lowers[k], solved)
        d = disjuncts[k]
        if run.solution is not None and run.value <= 0:
            x = _confirm(problem, d, run, lo_t[k], hi_t[k])
            if x is None:
                status = "unknown" if status != "sat" else status
            elif run.value < found_value:
                found, found_value, status = x, run.value, "sat"
                if not exhaustive:
                    break
        elif lowers[k] <= 0 and status != "sat":
            status = "unknown"
    lower = min(lowers) if lowers else math.inf
    if status == "sat":
        return _Decision("sat", lower, found, "milp")
    return _Decision(status, lower, None, _STEPS[step] if status != "unknown" else "")


def _cut_screen(
    milp: Milp, cost: Array, offset: float, cutter: ReluCuts, deadline: float
) -> tuple[float, Array | None]:
    """A sound lower bound on min cost·v + offset over the LP relaxation of ``milp`` tightened
    by rounds of Anderson et al.'s cuts (``cuts.ReluCuts``), and the last LP minimizer (None if
    no LP solved). Stops once the bound is > 0, after ``CUT_ROUNDS`` rounds, when a round
    separates no cut or gains less than ``CUT_STALL`` of the gap, or at ``deadline``."""
    left = deadline - time.perf_counter()
    if left <= 0:
        return -math.inf, None
    h = milp.highs(cost, offset, {"threads": 1, "time_limit": left})
    h.changeColsIntegrality(
        milp.num_col,
        np.arange(milp.num_col, dtype=np.int32),
        np.zeros(milp.num_col, dtype=np.uint8),
    )
    current = milp
    pool: CutPool | None = None
    best, point = -math.inf, None
    for _ in range(CUT_ROUNDS):
        h.run()
        if _status_name(h) != "kOptimal":
            break
        solution = h.getSolution()
        bound = _dual_bound(current, cost, offset, np.asarray(solution.row_dual))
        gained = bound - best
        best, point = max(best, bound), np.asarray(solution.col_value, dtype=np.float64)
        if best > 0 or gained < CUT_STALL * abs(best):
            break
        cuts = cutter.separate(point, limit=CUT_LIMIT)
        left = deadline - time.perf_counter()
        if cuts is None or left <= 0:
            break
        cuts.add_to_highs(h)
        h.setOptionValue("time_limit", left)
        if pool is None:
            pool = cuts
        else:
            pool.extend(cuts)
        current = pool.add_to(milp)
    h.clear()
    return best, point


def _falsify(problem: _Problem, d: Halfspaces, start: Tensor) -> Tensor | None:
    """A re-checked counterexample for disjunct ``d`` by signed-gradient descent from ``start``
    (n,), or None."""
    objective = _disjunct_objective(problem.net, d)
    best, value = _descend(objective, start[None], problem.project, 0.1 * problem.width)
    if float(value[0]) <= 0 and problem.accept(best[0]):
        return best[0]
    return None


def _disjunct_model(
    problem: _Problem, d: Halfspaces, lo_t: float, hi_t: float
) -> tuple[Milp, Array, float]:
    """(MILP, cost, offset) of min t, t ≥ (A z − b)_m. A single row needs no t: the objective
    is the row itself, and every such disjunct shares the network's model."""
    cols, coef, const = problem.cols.output_form(d.A, d.b)
    m = coef.shape[0]
    if m == 1:
        milp = problem.base()
        cost = np.zeros(milp.num_col)
        cost[cols] = coef[0]
        return milp, cost, float(const[0])
    builder = problem.builder.copy()
    t = builder.columns(np.array([lo_t]), np.array([hi_t]))
    p = cols.shape[0]
    rows = np.r_[np.repeat(np.arange(m), p), np.arange(m)]
    where = np.r_[np.tile(cols, m), np.full(m, t[0])]
    vals = np.r_[-coef.ravel(), np.ones(m)]
    builder.rows(rows, where, vals, const, np.full(m, np.inf))  # t − coef·h ≥ const
    milp = builder.build()
    cost = np.zeros(milp.num_col)
    cost[t] = 1.0
    return milp, cost, 0.0


def _lp_bounds(models: Sequence[tuple[Milp, Array, float]], deadline: float) -> list[float]:
    """Sound lower bounds on the LP relaxation of each (MILP, cost, offset) (−inf where the LP
    did not solve in time); models sharing a ``Milp`` share one warm-started HiGHS LP."""
    out = [-math.inf] * len(models)
    h: Any = None
    current: Milp | None = None
    for i, (milp, cost, offset) in enumerate(models):
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        if milp is not current:
            if h is not None:
                h.clear()
            h = milp.highs(cost, offset, {"threads": 1, "time_limit": left})
            cols = np.arange(milp.num_col, dtype=np.int32)
            h.changeColsIntegrality(milp.num_col, cols, np.zeros(milp.num_col, dtype=np.uint8))
            current = milp
        else:
            h.setOptionValue("time_limit", left)
            h.changeColsCost(milp.num_col, np.arange(milp.num_col, dtype=np.int32), cost)
            h.changeObjectiveOffset(offset)
        h.run()
        if _status_name(h) == "kOptimal":
            out[i] = _dual_bound(milp, cost, offset, np.asarray(h.getSolution().row_dual))
    if h is not None:
        h.clear()
    return out


def _dual_bound(milp: Milp, cost: Array, offset: float, y: Array) -> float:
    """Weak duality: for any row prices y, cost·v ≥ Σ_r min(y_r·L_r, y_r·U_r) +
    Σ_j min(r_j·l_j, r_j·u_j) + offset with r = cost − Aᵀy, over L ≤ A v ≤ U, l ≤ v ≤ u. Prices
    whose sign would meet an infinite row side are set to 0; the sum is lowered by 1e-10 of
    its terms' magnitude for rounding (Neumaier and Shcherbina 2004)."""
    y = np.where(np.isinf(milp.row_lower), np.minimum(y, 0.0), y)
    y = np.where(np.isinf(milp.row_upper), np.maximum(y, 0.0), y)
    rows = np.where(y > 0, y * np.where(np.isinf(milp.row_lower), 0.0, milp.row_lower), 0.0)
    rows += np.where(y < 0, y * np.where(np.isinf(milp.row_upper), 0.0, milp.row_upper), 0.0)
    reduced = cost - milp.matrix.T @ y
    cols = np.minimum(reduced * milp.col_lower, reduced * milp.col_upper)
    if not np.isfinite(cols).all():
        return -math.inf
    total = float(rows.sum() + cols.sum() + offset)
    size = float(np.abs(rows).sum() + np.abs(cols).sum() + abs(offset))
    return total - 1e-10 * size


def _solve_disjunct(
    milp: Milp,
    cost: Array,
    offset: float,
    time_limit: float,
    margin: float,
    exhaustive: bool = False,
) -> tuple[_Run, float]:
    """min t, stopped once proved > margin or an incumbent ≤ 0 exists (run to optimality when
    ``exhaustive``). Returns the run and the certified lower bound on min t (−inf if none).

    Early-stopping runs use the objective cutoff c = ``CUTOFF``·margin and no primal heuristics
    (``PROOF_SETTINGS``): only t < c matters, so nodes whose bound reaches c are pruned. The
    dual bound HiGHS reports then holds only up to c (past it, HiGHS may report an incumbent it
    found above the cutoff as "optimal"), and "infeasible" means min t ≥ c: the certified bound
    is min(dual, c) − margin. The model's feasibility at the domain's centre is checked before
    (``_Problem.feasible``), so that infeasibility is never numerical failure in disguise."""
    if exhaustive:
        run = _solve(milp, cost, offset, time_limit=time_limit, rel_gap=1e-9)
        if run.status == "kInfeasible":
            warnings.warn(
                "HiGHS declared infeasible a model with a feasible point (the domain's centre): "
                "numerical trouble, the answer is left unknown",
                NumericalTroubleWarning,
                stacklevel=3,
            )
            return run, -math.inf
        return run, run.dual - margin
    cutoff = CUTOFF * margin
    run = _solve(
        milp,
        cost,
        offset,
        time_limit=time_limit,
        stop_above=margin,
        stop_below=0.0,
        cutoff=cutoff,
        settings=PROOF_SETTINGS,
    )
    if run.status == "kInfeasible":
        return run, cutoff - margin
    return run, min(run.dual, cutoff) - margin


def _confirm(
    problem: _Problem, d: Halfspaces, run: _Run, lo_t: float, hi_t: float
) -> Tensor | None:
    """The MILP's incumbent as a re-checked counterexample, repaired by a short descent if the
    re-check fails; None if neither works."""
    if run.solution is None:
        return None
    x = problem.extract(run.solution)
    objective = _disjunct_objective(problem.net, d)
    with torch.no_grad():
        forward = float(objective(x[None])[0])
    scale = 1.0 + max(abs(lo_t), abs(hi_t))
    if abs(forward - run.value) > 1e-4 * scale:
        warnings.warn(
            f"the MILP's objective at its solution ({run.value:.6g}) disagrees with the forward "
            f"pass ({forward:.6g})",
            NumericalTroubleWarning,
            stacklevel=4,
        )
    if problem.accept(x):
        return x
    best, _ = _descend(objective, x[None], problem.project, 0.01 * problem.width, steps=30)
    if problem.accept(best[0]):
        return best[0]
    return None


# ----------------------------------------------------------------------- shared checks


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _check_time(time_limit: Any) -> float:
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)):
        raise ValueError(f"time_limit: expected a number of seconds > 0, got {time_limit!r}")
    if not (time_limit > 0 and math.isfinite(time_limit)):
        raise ValueError(f"time_limit: expected a finite number of seconds > 0, got {time_limit}")
    return float(time_limit)


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected a pair (lo, hi), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds: expected finite lo < hi, got {bounds!r}")
    return lo, hi


def _bounds_method(method: str | None) -> str:
    methods = tuple(_BOUND_METHODS)
    if method is None:
        return "progressive" if "progressive" in methods else "ibp"
    return _check_choice("bounds_method", method, methods)


def _layer_bounds(net: Network, dom: InputDomain, method: str, seconds: float) -> LayerBounds:
    """``bounds.layer_bounds`` with its LP steps limited to ``seconds``."""
    if method == "ibp":
        return compute_layer_bounds(net, dom, method)
    return compute_layer_bounds(net, dom, method, time_limit=max(seconds, 1e-3))


def _inputs(x: Any, y: Any, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    from advex.model import check_inputs

    x, y, _ = check_inputs(x, y, bounds=bounds)
    return x.detach().cpu(), y.detach().cpu()


# ----------------------------------------------------------------------------- verify


def verify(
    model: Any,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    time_limit: float = 60.0,
    bounds_method: str | None = None,
    falsifier: bool = True,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    stop_early: bool = True,
) -> Verification:
    """Decide, per sample, whether every x' with ‖x' − x‖ ≤ eps in ``bounds`` is classified y.

    Args:
        model: an ``nn.Module`` or advex ``Classifier`` of supported layers (logits out), or a
            ``Network``.
        x: inputs (B, ...) in ``bounds``; y: labels (B,).
        eps: the radius (≥ 0) in ``norm`` ("linf" or "l1").
        time_limit: seconds per sample for its bounds and MILPs (shared across its classes).
        bounds_method: how layer bounds are computed (``bounds.METHODS``); None: "progressive"
            where available, else "ibp".
        falsifier: run PGD (40 steps, 2 restarts) first.
        bounds: the valid input range.
        seed: the PGD seed.
        stop_early: False solves every class's MILP to optimality (no falsifier, no skip by
            bounds, no early stop): slower, but ``margin_lower`` is then the minimum margin
            over the domain to within 1e-9 relative (less the safety margin), and the
            counterexample, if any, is the point of smallest margin.

    Returns:
        A ``Verification`` (see there); see the module docstring for the steps and soundness.

    Raises:
        ValueError: a bad argument, named (norm, eps, time_limit, bounds_method, bounds, x, y).
        TypeError: x or y of the wrong type.
        UnsupportedLayerError: the model holds a layer that cannot be encoded.
    """
    norm = _check_choice("norm", norm, VERIFY_NORMS)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps}")
    eps = float(eps)
    time_limit = _check_time(time_limit)
    box = _check_bounds(bounds)
    method = _bounds_method(bounds_method)
    silence_banner()
    x, y = _inputs(x, y, box)
    target = _target(model, x)
    if int(y.max()) >= target.net.num_classes:
        raise ValueError(f"y: labels must be < {target.net.num_classes}")
    n = x.shape[0]
    flat = x.reshape(n, -1).to(torch.float64).clamp(*box)
    status = ["unknown"] * n
    decided = [""] * n
    counter = torch.full_like(flat, math.nan)
    margin_lower = torch.full((n,), math.nan, dtype=torch.float64)
    margin_adv = torch.full((n,), math.nan, dtype=torch.float64)
    unstable = torch.full((n,), -1, dtype=torch.long)
    seconds = torch.zeros(n, dtype=torch.float64)

    start = time.perf_counter()
    clean_margin, _ = target.margins(flat, y)
    for i in torch.nonzero(clean_margin <= 0).flatten().tolist():
        status[i], decided[i] = "not robust", "clean"
        counter[i] = flat[i]
        margin_adv[i] = clean_margin[i]
    if falsifier and stop_early and eps > 0:
        todo = torch.tensor([s == "unknown" for s in status])
        if bool(todo.any()):
            candidates = _pgd(target, x, y, eps, norm, box, seed, todo)
            for i in torch.nonzero(todo).flatten().tolist():
                dom = InputDomain.ball(flat[i : i + 1], eps, norm, box)
                cand = dom.project(candidates[i : i + 1])
                broken, margin = target.misclassified(cand, y[i : i + 1])
                if bool(broken[0]) and bool(dom.contains(cand, tol=1e-9)[0]):
                    status[i], decided[i] = "not robust", "falsifier"
                    counter[i] = cand[0]
                    margin_adv[i] = margin[0]
    seconds += (time.perf_counter() - start) / n

    for i in range(n):
        if status[i] != "unknown":
            continue
        begin = time.perf_counter()
        problem = _verify_problem(
            target, flat[i], int(y[i]), eps, norm, box, method, BOUNDS_SHARE * time_limit
        )
        unstable[i] = problem.cols.unstable
        disjuncts = misclassification(int(y[i]), target.net.num_classes)
        decision = _decide(problem, disjuncts, begin + time_limit, exhaustive=not stop_early)
        margin_lower[i] = decision.lower
        if decision.status == "unsat":
            status[i], decided[i] = "robust", decision.decided_by
        elif decision.status == "sat" and decision.x is not None:
            status[i], decided[i] = "not robust", decision.decided_by
            counter[i] = decision.x
            margin_adv[i] = target.margins(decision.x[None], y[i : i + 1])[0][0]
        seconds[i] += time.perf_counter() - begin
    return Verification(
        status=status,
        robust=torch.tensor([s == "robust" for s in status], dtype=torch.bool),
        counterexample=counter.reshape(x.shape),
        margin_lower=margin_lower,
        margin_adv=margin_adv,
        decided_by=decided,
        seconds=seconds,
        unstable=unstable,
        eps=eps,
        norm=norm,
        bounds_method=method,
    )


def _pgd(
    target: _Target,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str,
    box: tuple[float, float],
    seed: int,
    active: Tensor,
) -> Tensor:
    """PGD's points (B, n) float64 for the ``active`` samples (x elsewhere)."""
    from advex.attacks import PGD
    from advex.model import as_classifier
    from advex.threat import ThreatModel

    clf = as_classifier(target.attackable, bounds=box)
    steps, restarts = FALSIFIER
    threat = ThreatModel(norm, eps=eps, bounds=box)  # type: ignore[arg-type]
    attack = PGD(threat, steps=steps, restarts=restarts, seed=seed)
    dev = clf.device
    result = attack(clf, x.to(dev), y.to(dev), active=active.to(dev))
    return result.x_adv.detach().cpu().reshape(x.shape[0], -1).to(torch.float64)


def _verify_problem(
    target: _Target,
    x0: Tensor,
    label: int,
    eps: float,
    norm: str,
    box: tuple[float, float],
    method: str,
    bounds_time: float,
) -> _Problem:
    """The encoding over the ball of sample x0 (n,), with the L1 budget rows for norm l1."""
    dom = InputDomain.ball(x0[None], eps, norm, box)
    lb = _layer_bounds(target.net, dom, method, bounds_time)
    builder = MilpBuilder()
    cols = encode_network(builder, target.net, lb)
    if norm == "l1":
        _add_l1_budget(builder, cols.inputs, dom, eps)
    centre = cols.assign(dom.center, builder.num_col)
    centre[np.isnan(centre)] = 0.0  # the L1 columns t = |x₀ − x₀|
    project = dom.project
    y = torch.tensor([label])

    def accept(x: Tensor) -> bool:
        v = x.reshape(1, -1)
        broken, _ = target.misclassified(v, y)
        return bool(broken[0]) and bool(dom.contains(v, tol=1e-9)[0])

    lo, hi = dom.box()
    width = float((hi - lo).max()) if hi.numel() else 0.0
    return _Problem(
        target.net, lb, builder, cols, cols.inputs, project, accept, max(width, 1e-12), centre
    )


def _add_l1_budget(builder: MilpBuilder, xc: Array, dom: InputDomain, eps: float) -> Array:
    """t ≥ |x − x₀| and Σ t ≤ eps; returns the t columns."""
    c = dom.center[0].numpy()
    lo, hi = (t[0].numpy() for t in dom.box())
    n = c.shape[0]
    t = builder.columns(np.zeros(n), np.maximum(hi - c, c - lo))
    r = np.arange(n)
    one = np.ones(n)
    builder.rows(np.r_[r, r], np.r_[t, xc], np.r_[one, -one], -c, np.full(n, np.inf))
    builder.rows(np.r_[r, r], np.r_[t, xc], np.r_[one, one], c, np.full(n, np.inf))
    builder.rows(np.zeros(n, dtype=np.int64), t, one, np.array([-np.inf]), np.array([eps]))
    return t


# ----------------------------------------------------------------------- solve_property


def solve_property(
    net: Network,
    prop: Property,
    *,
    time_limit: float = 60.0,
    bounds_method: str | None = None,
    falsifier: bool = True,
    seed: int = 0,
) -> PropertyResult:
    """Decide ∃ x ∈ [prop.lower, prop.upper] with net(x) in one of ``prop.disjuncts``.

    The box is the image of [−1, 1]ⁿ under x = c + r ⊙ u (a ``Scale`` layer put in front of the
    network), so the bounds and the encoding see an ordinary L∞ ball. Per disjunct, weakest
    bound first: a short signed-gradient falsifier from the centre and two random points, then
    min t s.t. t ≥ (A z − b)_m (see the module docstring).

    Raises:
        ValueError: the property's sizes do not match the network, or a bad argument.
    """
    if not isinstance(net, Network):
        raise TypeError(f"net: expected an advex.certify.Network, got {type(net).__name__}")
    if not isinstance(prop, Property):
        raise TypeError(f"prop: expected an advex.certify.spec.Property, got {type(prop).__name__}")
    if prop.lower.numel() != net.input_size:
        raise ValueError(f"prop: {prop.lower.numel()} inputs for a network of {net.input_size}")
    for d in prop.disjuncts:
        if d.A.shape[1] != net.num_classes:
            raise ValueError(
                f"prop: a disjunct over {d.A.shape[1]} outputs, network has {net.num_classes}"
            )
    time_limit = _check_time(time_limit)
    silence_banner()
    method = _bounds_method(bounds_method)
    start = time.perf_counter()
    lo, hi = prop.lower[None], prop.upper[None]

    def accept(x: Tensor) -> bool:
        v = x.reshape(1, -1)
        with torch.no_grad():
            return bool(prop.violated_by(v, net.forward(v))[0])

    def project(v: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(v, lo), hi)

    width = max(float((hi - lo).max()), 1e-12)
    if falsifier:
        g = torch.Generator().manual_seed(seed)
        starts = torch.cat(
            [
                (lo + hi) / 2,
                lo + (hi - lo) * torch.rand(2, lo.shape[1], generator=g, dtype=torch.float64),
            ]
        )
        for d in prop.disjuncts:
            best, values = _descend(_disjunct_objective(net, d), starts, project, width / 8)
            for k in torch.argsort(values).tolist():
                if float(values[k]) <= 0 and accept(best[k]):
                    return _sat(net, best[k], -math.inf, "falsifier", start)
    centre, radius = (prop.lower + prop.upper) / 2, (prop.upper - prop.lower) / 2
    front = Scale(radius, centre, in_shape=(net.input_size,))
    boxed = Network([front, *net.layers], (net.input_size,))
    unit = torch.zeros(1, net.input_size, dtype=torch.float64)
    dom = InputDomain.ball(unit, 1.0, "linf", (-1.0, 1.0))
    lb = _layer_bounds(boxed, dom, method, BOUNDS_SHARE * time_limit)
    builder = MilpBuilder()
    cols = encode_network(builder, boxed, lb)
    # The encoding lives on u (cols.layer_cols[0]); x = c + r ⊙ u is layer_cols[1]. Descents,
    # re-checks and the margin bounds use the original network on x (same last layer).
    middle = cols.assign(unit, builder.num_col)
    problem = _Problem(net, lb, builder, cols, cols.layer_cols[1], project, accept, width, middle)
    decision = _decide(problem, prop.disjuncts, start + time_limit)
    if decision.status == "sat" and decision.x is not None:
        return _sat(net, decision.x, decision.lower, decision.decided_by, start)
    seconds = time.perf_counter() - start
    return PropertyResult(decision.status, None, None, decision.lower, decision.decided_by, seconds)


def _sat(net: Network, x: Tensor, lower: float, by: str, start: float) -> PropertyResult:
    with torch.no_grad():
        z = net.forward(x[None])[0]
    return PropertyResult("sat", x.clone(), z, lower, by, time.perf_counter() - start)


# ------------------------------------------------------------------- minimal distortion


def minimal_distortion(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    time_limit: float = 60.0,
    upper: float | Tensor | None = None,
    bounds_method: str | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    tolerance: float = 1e-4,
    solver: str = "auto",
    seed: int = 0,
) -> Distortion:
    """The minimal adversarial distance d* = min {‖x' − x‖ : x' ∈ bounds, argmax f(x') ≠ y}.

    Args:
        model: an ``nn.Module``/``Classifier`` of supported layers, or a ``Network``.
        x: inputs (B, ...) in ``bounds``; y: labels (B,).
        norm: "linf", "l1" or "l2".
        time_limit: seconds per sample for its bounds and MILPs.
        upper: a known adversarial distance per sample (a float or (B,)); the big-M bounds are
            computed on the ball of that radius. None: run FMN (and fall back to the whole box
            where it fails); its re-checked points seed the search.
        bounds_method: see ``verify``.
        bounds: the valid input range.
        tolerance: relative precision: the MILP stops at a relative gap of tolerance/4 and a
            sample is ``exact`` when upper − lower ≤ tolerance·upper.
        solver: for L2, "scip" (pyscipopt; an error if missing), "interval" (no MIQCP: the
            certified interval [d*_∞ lower bound, attack distance]) or "auto" (SCIP when
            installed). Ignored for L∞ and L1 (HiGHS).
        seed: the attack's seed.

    Returns:
        A ``Distortion``; see the module docstring for the method.

    Raises:
        ValueError: a bad argument, named; ``solver="scip"`` without pyscipopt.
    """
    norm = _check_choice("norm", norm, DISTANCE_NORMS)
    time_limit = _check_time(time_limit)
    box = _check_bounds(bounds)
    method = _bounds_method(bounds_method)
    solver = _check_choice("solver", solver, ("auto", "scip", "interval"))
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise ValueError(f"tolerance: expected a number in (0, 1), got {tolerance!r}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance: expected a number in (0, 1), got {tolerance}")
    x, y = _inputs(x, y, box)
    n = x.shape[0]
    radius = _check_upper(upper, n)
    silence_banner()
    use_scip = norm == "l2" and solver != "interval" and _has_scip()
    if norm == "l2" and solver == "scip" and not use_scip:
        raise ValueError("solver: 'scip' needs pyscipopt, which is not installed")
    target = _target(model, x)
    if int(y.max()) >= target.net.num_classes:
        raise ValueError(f"y: labels must be < {target.net.num_classes}")
    flat = x.reshape(n, -1).to(torch.float64).clamp(*box)
    lower = torch.zeros(n, dtype=torch.float64)
    best = torch.full((n,), math.inf, dtype=torch.float64)
    x_adv = torch.full_like(flat, math.nan)
    exact = torch.zeros(n, dtype=torch.bool)
    seconds = torch.zeros(n, dtype=torch.float64)
    unstable = torch.full((n,), -1, dtype=torch.long)
    used = ["none"] * n

    start = time.perf_counter()
    clean, _ = target.margins(flat, y)
    wrong = clean <= 0
    for i in torch.nonzero(wrong).flatten().tolist():
        best[i], x_adv[i], exact[i], used[i] = 0.0, flat[i], True, "clean"
    if radius is None:
        radius = _box_radius(flat, norm, box)
        found = _fmn(target, x, y, norm, box, seed, ~wrong)
        for i in torch.nonzero(~wrong).flatten().tolist():
            hit = _push_out(target, flat[i], found[i], int(y[i]), norm, box)
            if hit is not None:
                x_adv[i], best[i] = hit
                radius[i] = min(float(radius[i]), float(best[i]))
    seconds += (time.perf_counter() - start) / n

    for i in range(n):
        if bool(wrong[i]):
            continue
        begin = time.perf_counter()
        search = _DistanceSearch(
            target,
            flat[i],
            int(y[i]),
            norm,
            float(radius[i]),
            box,
            method,
            tolerance,
            begin + time_limit,
        )
        if not bool(torch.isnan(x_adv[i]).any()):
            search.offer(x_adv[i])
        if norm == "l2" and not use_scip:
            inner = _DistanceSearch(
                target,
                flat[i],
                int(y[i]),
                "linf",
                float(radius[i]),
                box,
                method,
                tolerance,
                begin + time_limit,
            )
            low = inner.run()
            search.lower = low
            used[i] = "interval"
            unstable[i] = inner.unstable
        else:
            search.run(scip=use_scip)
            used[i] = search.solver
            unstable[i] = search.unstable
        lower[i] = min(search.lower, search.best)
        best[i] = search.best
        if search.x is not None:
            x_adv[i] = search.x
        exact[i] = bool(best[i] - lower[i] <= tolerance * best[i]) or (
            math.isinf(float(best[i])) and math.isinf(float(lower[i]))
        )
        seconds[i] += time.perf_counter() - begin
    return Distortion(
        lower=lower,
        upper=best,
        exact=exact,
        x_adv=x_adv.reshape(x.shape),
        seconds=seconds,
        unstable=unstable,
        norm=norm,
        tolerance=float(tolerance),
        solver=used,
    )


def _has_scip() -> bool:
    try:
        import pyscipopt  # noqa: F401
    except ImportError:
        return False
    return True


def _check_upper(upper: Any, n: int) -> Tensor | None:
    if upper is None:
        return None
    if isinstance(upper, bool):
        raise ValueError(f"upper: expected a distance or {n} distances, got {upper!r}")
    t = torch.as_tensor(upper, dtype=torch.float64).reshape(-1).clone()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"upper: expected a number or {n} values, got {t.numel()}")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError("upper: distances must be finite and > 0")
    return t


def _box_radius(flat: Tensor, norm: str, box: tuple[float, float]) -> Tensor:
    """The largest distance from each row to a point of the box."""
    far = torch.maximum(flat - box[0], box[1] - flat)
    return lp_norm(far, norm)


def _fmn(
    target: _Target,
    x: Tensor,
    y: Tensor,
    norm: str,
    box: tuple[float, float],
    seed: int,
    active: Tensor,
) -> Tensor:
    """FMN's points (B, n) float64 (x where inactive or failed)."""
    from advex.attacks.fmn import FMN
    from advex.model import as_classifier
    from advex.threat import ThreatModel

    clf = as_classifier(target.attackable, bounds=box)
    attack = FMN(ThreatModel(norm, bounds=box), seed=seed)  # type: ignore[arg-type]
    dev = clf.device
    result = attack(clf, x.to(dev), y.to(dev), active=active.to(dev))
    return result.x_adv.detach().cpu().reshape(x.shape[0], -1).to(torch.float64)


#: Outward scalings tried on a point on the decision boundary: x₀ + s·(x − x₀).
_PUSH = (1.0, 1 + 1e-8, 1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3, 1 + 1e-2)


def _push_out(
    target: _Target, x0: Tensor, point: Tensor, label: int, norm: str, box: tuple[float, float]
) -> tuple[Tensor, Tensor] | None:
    """The first of x₀ + s·(point − x₀), s ∈ ``_PUSH``, clipped into the box, that both models
    misclassify (margin < 0), with its distance; None if none does."""
    if bool(torch.isnan(point).any()):
        return None
    direction = point - x0
    if not bool((direction != 0).any()):
        return None
    cands = torch.stack([(x0 + s * direction).clamp(*box) for s in _PUSH])
    broken, _ = target.misclassified(cands, torch.full((len(_PUSH),), label))
    hits = torch.nonzero(broken).flatten()
    if hits.numel() == 0:
        return None
    v = cands[int(hits[0])]
    return v, lp_norm((v - x0)[None], norm)[0]


class _DistanceSearch:
    """min ‖x − x₀‖ over adversarial x in the ball of radius ``radius`` ∩ box, per class."""

    def __init__(
        self,
        target: _Target,
        x0: Tensor,
        label: int,
        norm: str,
        radius: float,
        box: tuple[float, float],
        method: str,
        tolerance: float,
        deadline: float,
    ) -> None:
        self.target, self.x0, self.label, self.norm = target, x0, label, norm
        self.radius, self.box, self.method = radius, box, method
        self.tolerance, self.deadline = tolerance, deadline
        self.best = math.inf
        self.x: Tensor | None = None
        self.lower = 0.0
        self.unstable = -1
        self.solver = "none"

    def offer(self, point: Tensor) -> None:
        """Take ``point`` as the incumbent if it is a re-checked, closer adversarial example."""
        hit = _push_out(self.target, self.x0, point, self.label, self.norm, self.box)
        if hit is not None and float(hit[1]) < self.best:
            self.x, self.best = hit[0], float(hit[1])

    def run(self, scip: bool = False) -> float:
        """Search every class; sets ``best``/``x`` and returns (and sets) the certified lower
        bound on d*."""
        net = self.target.net
        dom = InputDomain.ball(self.x0[None], self.radius, self.norm, self.box)
        left = self.deadline - time.perf_counter()
        lb = _layer_bounds(net, dom, self.method, BOUNDS_SHARE * left)
        builder = MilpBuilder()
        cols = encode_network(builder, net, lb)
        self.unstable = cols.unstable
        if self.norm == "linf":
            dist = self._linf_rows(builder, cols.inputs)
        elif self.norm == "l1":
            dist = _add_l1_budget(builder, cols.inputs, dom, self.radius)
        else:
            dist = np.zeros(0, dtype=np.int64)
        centre = cols.assign(self.x0[None], builder.num_col)
        centre[np.isnan(centre)] = 0.0  # e = 0, t = 0 at x₀
        problem = _Problem(net, lb, builder, cols, cols.inputs, lambda v: v, bool, 1.0, centre)
        if not problem.feasible():
            self.lower = 0.0
            return self.lower
        disjuncts = misclassification(self.label, net.num_classes)
        ranges = [_spec_range(net, lb, d) for d in disjuncts]
        # Certified lower bound on d_k per class; classes that never win inside the ball have
        # d_k > radius.
        found = [self.radius] * len(disjuncts)
        open_ = [
            k
            for k in range(len(disjuncts))
            if float(ranges[k][0][0]) <= _safety(float(ranges[k][0][0]), float(ranges[k][1][0]))
        ]
        models = {k: self._class_model(builder, cols, disjuncts[k], dist) for k in open_}
        for k in open_:
            found[k] = 0.0
        if not scip and open_:
            relaxed = _lp_bounds([models[k] for k in open_], self.deadline)
            for k, value in zip(open_, relaxed, strict=True):
                found[k] = max(value, 0.0)
        for k in sorted(open_, key=lambda i: found[i]):
            if found[k] >= self.best:
                continue  # the LP already shows class k cannot beat the best point
            left = self.deadline - time.perf_counter()
            if left <= 0:
                continue
            self.solver = "scip" if scip else "highs"
            milp, cost, _ = models[k]
            cutoff = self.best
            if scip:
                run = _scip_distance(
                    milp, cols.inputs, self.x0, self.radius, cutoff, left, self.tolerance
                )
                dual = math.sqrt(max(run.dual, 0.0)) if run.dual > -math.inf else 0.0
            else:
                run = _solve(
                    milp, cost, 0.0, time_limit=left, cutoff=cutoff, rel_gap=self.tolerance / 4
                )
                dual = max(run.dual, 0.0) if run.dual > -math.inf else 0.0
            # Past the cutoff HiGHS/SCIP only show that d_k ≥ cutoff (see _solve_disjunct).
            if run.status == "kInfeasible":
                found[k] = max(found[k], min(cutoff, self.radius))
            else:
                found[k] = max(found[k], min(dual, cutoff))
            if run.solution is not None:
                self.offer(torch.as_tensor(run.solution[cols.inputs], dtype=torch.float64))
        safety = 1e-7 * (1 + self.radius)  # solver tolerances on a well-scaled objective
        self.lower = max(0.0, min(found) - safety) if found else self.radius
        return self.lower

    @staticmethod
    def _class_model(
        builder: MilpBuilder, cols: NetworkColumns, d: Halfspaces, dist: Array
    ) -> tuple[Milp, Array, float]:
        """The distance model with class k's margin row z_y − z_k ≤ 0."""
        b2 = builder.copy()
        hcols, coef, const = cols.output_form(d.A, d.b)
        zeros = np.zeros(hcols.shape[0], dtype=np.int64)
        b2.rows(zeros, hcols, coef[0], np.array([-np.inf]), -const)
        milp = b2.build()
        cost = np.zeros(milp.num_col)
        cost[dist] = 1.0
        return milp, cost, 0.0

    def _linf_rows(self, builder: MilpBuilder, xc: Array) -> Array:
        """e ≥ |x − x₀|_i for every i (x − e ≤ x₀, x + e ≥ x₀); returns [e]."""
        c = self.x0.numpy()
        n = c.shape[0]
        e = builder.columns(np.zeros(1), np.array([self.radius]))
        r = np.arange(n)
        one = np.ones(n)
        ecol = np.full(n, e[0])
        builder.rows(np.r_[r, r], np.r_[xc, ecol], np.r_[one, -one], np.full(n, -np.inf), c)
        builder.rows(np.r_[r, r], np.r_[xc, ecol], np.r_[one, one], c, np.full(n, np.inf))
        return e


def _scip_distance(
    milp: Milp,
    x_cols: Array,
    x0: Tensor,
    radius: float,
    cutoff: float,
    time_limit: float,
    tolerance: float,
) -> _Run:
    """min s s.t. s ≥ ‖x − x₀‖₂² over ``milp`` with SCIP: the linear part passed through an MPS
    file written by HiGHS, the quadratic epigraph row added on the input columns."""
    import pyscipopt

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.mps")
        h = milp.highs(np.zeros(milp.num_col))
        h.writeModel(path)
        h.clear()
        model = pyscipopt.Model()
        model.hideOutput()
        model.readProblem(path)
    named = {v.name: v for v in model.getVars()}
    c = x0.numpy()
    xs = []
    for k in x_cols.tolist():
        var = named.get(f"c{k}")
        if var is None:  # a column without entries in the MPS file
            var = model.addVar(f"c{k}", lb=float(milp.col_lower[k]), ub=float(milp.col_upper[k]))
        xs.append(var)
    s = model.addVar("distance2", lb=0.0, ub=radius * radius * (1 + 1e-9) + 1e-12)
    model.addCons(
        pyscipopt.quicksum((v - float(ci)) * (v - float(ci)) for v, ci in zip(xs, c, strict=True))
        <= s
    )
    model.setObjective(s, "minimize")
    model.setParam("limits/time", max(float(time_limit), 1e-3))
    model.setParam("limits/gap", tolerance / 4)
    model.setParam("parallel/maxnthreads", 1)
    if math.isfinite(cutoff):
        model.setObjlimit(cutoff * cutoff)
    start = time.perf_counter()
    model.optimize()
    seconds = time.perf_counter() - start
    status = model.getStatus()
    names = {
        "optimal": "kOptimal",
        "gaplimit": "kOptimal",
        "timelimit": "kTimeLimit",
        "infeasible": "kInfeasible",
        "userinterrupt": "kInterrupt",
        "nodelimit": "kIterationLimit",
    }
    name = names.get(status, "kUnknown")
    if name == "kUnknown":
        warnings.warn(f"SCIP stopped with status {status!r}", NumericalTroubleWarning, stacklevel=3)
    solution = None
    value = math.inf
    if model.getNSols() > 0:
        best = model.getBestSol()
        solution = np.full(milp.num_col, np.nan)
        solution[x_cols] = [model.getSolVal(best, v) for v in xs]
        value = float(model.getSolObjVal(best))
    dual = float(model.getDualbound()) if name in _BOUND_STATUSES else -math.inf
    return _Run(name, dual, value, solution, seconds)
