"""Box-constrained L-BFGS (Szegedy et al.), the first minimum-norm adversarial attack.

For each sample and a constant c > 0, L-BFGS-B (Byrd, Lu, Nocedal, Zhu 1995; ``scipy``) solves

    min_δ  c·‖δ‖₂² − log p(x + δ)   s.t.  lo ≤ x + δ ≤ hi,

with p = p_t, the softmax probability of the target (targeted: −log p_t is the paper's
cross-entropy loss), or p = 1 − p_y = Σ_{j≠y} p_j, the probability of any wrong class
(untargeted; −log(1 − p_y) is computed stably as logsumexp(z) − logsumexp_{j≠y}(z)). In this
form a larger c means a smaller δ, so the paper's "line search over c" looks, per sample, for
the *largest* c whose minimizer is still adversarial: ``search_steps`` solves from c₀ =
``initial_const``; c × 10 after each success until a solve fails, c ÷ 10 after each failure
until one succeeds; then bisection on log c between the largest succeeding and the smallest
failing c. Every point the solver evaluates (line-search trials included) passes through the
tracker, which keeps the smallest successful one; that is what is returned.

Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow, Fergus. Intriguing properties of neural
networks. ICLR 2014. arXiv:1312.6199

Batching. The per-sample problems are independent, but one L-BFGS-B run on the concatenated
variables with the summed objective is *not* the same as separate runs: the line search, the
stopping tests and the quasi-Newton memory (inner products over all variables) would be shared,
so one sample's curvature and step length would steer every other's; and scipy's L-BFGS-B costs
the same per variable either way (measured: ~0.9 ms per 784-variable sample per evaluation
jointly on 200 samples, ~0.5 ms separately, thread hand-over included). So each sample gets its
own, exact L-BFGS-B run (``scipy.optimize.minimize``, the public interface) in its own thread,
driven as a coroutine: its objective hands δ to the attack and blocks; once every active sample
has asked, the attack evaluates all of them in one batched forward + backward
(``Tracker.value_and_grad``) and answers each. Only one thread runs at a time (strict
hand-over), so there is no contention for the GIL, and results do not depend on thread timing:
a sample's result is the same alone or in a batch, up to the floating-point effect of batch
size on the model. The optimizer works in float64; the model is evaluated in the input's
dtype. BLAS is limited to one thread meanwhile (``threadpoolctl``): OpenBLAS worker threads
spin between the many tiny calls and would take a core from the model (4× slower without).

Differences from the paper: the squared norm (smooth at δ = 0; the paper writes c·|r|); an
untargeted variant (above); each solve starts from the previous solve's solution rather than
from δ = 0 (on MNIST: the same distances with ~10 % fewer evaluations at 100 iterations, 1 %
smaller distances at 20); the search over c is C&W's (Carlini & Wagner 2017, §V) made
geometric in both directions, with "succeeded" meaning the solve's final point is adversarial;
a solve stops early once an iteration improves the objective by less than ``tol`` (relative);
the returned point is the best one evaluated, not the last minimizer. Defaults (10 solves of at
most 50 iterations, c₀ = 1, tol = 1e-6) were tuned on the bundled MNIST models, whose best
constants lie between 0.1 and 10; there they match Carlini–Wagner L2 run for 9 × 1000 steps
(per-image distance ratio 1.00 on mnist_cnn, 1.01 on mnist_cnn_pgd) at ~350–470 forward +
backward passes per sample.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar, cast

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from threadpoolctl import threadpool_limits
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import MinNormAttack, Tracker
from advex.attacks.search import ConstantSearch
from advex.result import succeeded
from advex.threat import ThreatModel

__all__ = ["LBFGS"]

_MAX_LINE_SEARCH = 20  # scipy's default maxls: evaluations one iteration may take


def _log_success_probability(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """log p_t (targeted) or log(1 − p_y) = log Σ_{j≠y} p_j (untargeted), per sample."""
    lse = logits.logsumexp(dim=1)
    if target is not None:
        return logits.gather(1, target.unsqueeze(1)).squeeze(1) - lse
    others = logits.scatter(1, y.unsqueeze(1), -math.inf).logsumexp(dim=1)
    return others - lse


# ----- one solver per sample, run as a coroutine in a thread ----------------------------------
class _Stopped(Exception):
    """Raised inside a worker when the coordinator ends its sample."""


_DONE = object()  # the coordinator's "stop" and the worker's "finished"

Ask = Callable[[object], object]


class _Coroutine:
    """A blocking function run in a thread as a coroutine: exactly one side runs at a time.

    ``body(ask)`` runs in the thread; ``ask(request)`` hands ``request`` to the coordinator and
    blocks until ``send(reply)`` passes ``reply`` back. ``start`` and ``send`` return the next
    request, or ``_DONE`` once ``body`` has returned. Sending ``_DONE`` makes ``ask`` raise
    ``_Stopped`` in the worker. Two semaphores keep the hand-over strict.
    """

    def __init__(self, body: Callable[[Ask], None]) -> None:
        self._body = body
        self._to_worker = threading.Semaphore(0)
        self._to_coordinator = threading.Semaphore(0)
        self._message: object = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._started = False
        self.done = False
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            self._body(self._ask)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the coordinator, which re-raises it
            self.error = e
        finally:
            self.done = True
            self._message = _DONE
            self._to_coordinator.release()

    def _ask(self, request: object) -> object:
        self._message = request
        self._to_coordinator.release()
        self._to_worker.acquire()
        if self._message is _DONE:
            raise _Stopped
        return self._message

    def start(self) -> object:
        self._started = True
        self._thread.start()
        self._to_coordinator.acquire()
        return self._message

    def send(self, reply: object) -> object:
        self._message = reply
        self._to_worker.release()
        self._to_coordinator.acquire()
        return self._message

    def stop(self) -> None:
        if not self._started:
            return
        if not self.done:
            self.send(_DONE)
        self._thread.join()


class _Solved:
    """A worker's message after a solve (``success`` None before the first one)."""

    __slots__ = ("success",)

    def __init__(self, success: bool | None) -> None:
        self.success = success


class _Solver:
    """The L-BFGS-B solves of one sample, one per constant c the coordinator hands it.

    Requests are δ (float64, flat) to evaluate, answered with (log p, ∇_δ log p, success), and
    ``_Solved`` after each solve, answered with the next c.
    """

    _RECENT = 2 * _MAX_LINE_SEARCH

    def __init__(self, lower: np.ndarray, upper: np.ndarray, options: dict[str, Any]) -> None:
        self.bounds = Bounds(lower, upper)
        self.options = options
        self._recent: list[tuple[np.ndarray, bool]] = []

    def __call__(self, ask: Ask) -> None:
        self._ask = ask
        delta = np.zeros(self.bounds.lb.shape)
        c = cast(float, ask(_Solved(None)))
        while True:
            self._recent.clear()
            res = minimize(
                self._objective,
                delta,
                args=(c,),
                jac=True,
                method="L-BFGS-B",
                bounds=self.bounds,
                options=self.options,
            )
            delta = np.clip(res.x, self.bounds.lb, self.bounds.ub)
            c = cast(float, ask(_Solved(self._success_at(delta))))

    def _evaluate(self, delta: np.ndarray) -> tuple[float, np.ndarray, bool]:
        reply = cast(tuple[float, np.ndarray, bool], self._ask(delta.copy()))
        value, grad, success = reply
        self._recent.append((delta.copy(), success))
        if len(self._recent) > self._RECENT:
            self._recent.pop(0)
        return value, grad, success

    def _objective(self, delta: np.ndarray, c: float) -> tuple[float, np.ndarray]:
        value, grad, _ = self._evaluate(delta)
        return c * float(delta @ delta) - value, 2.0 * c * delta - grad

    def _success_at(self, delta: np.ndarray) -> bool:
        """Whether the solve's final point is adversarial (evaluated again only if needed)."""
        for point, success in reversed(self._recent):
            if np.array_equal(point, delta):
                return success
        return self._evaluate(delta)[2]


class _Search(ConstantSearch):
    """``ConstantSearch`` on s = 1/c, geometric in *both* directions until bracketed.

    The shared search grows s by ``factor`` while every run fails but, while every run
    succeeds, only halves s (bisection toward 0): from c₀ = 1 it would need 10 solves to reach
    c = 1000. Here s ÷ ``factor`` on success until a failure is seen, then bisection between
    the largest failing and the smallest succeeding s, so c₀ matters little.
    """

    def update(self, rows: Tensor, success: Tensor) -> None:
        s = self._s[rows]
        upper = torch.where(success, torch.minimum(self.upper[rows], s), self.upper[rows])
        lower = torch.where(success, self.lower[rows], torch.maximum(self.lower[rows], s))
        bisect = (lower * upper).sqrt()
        nxt = torch.where(
            torch.isinf(upper), s * self.factor, torch.where(lower > 0, bisect, s / self.factor)
        )
        self.upper[rows] = upper
        self.lower[rows] = lower
        self._s[rows] = nxt


# ----- the attack -----------------------------------------------------------------------------
class LBFGS(MinNormAttack):
    """Box-constrained L-BFGS: per sample, L-BFGS-B on c·‖δ‖₂² − log p, searching c.

    Args:
        threat: an L2 threat model; ``eps=None`` for the smallest perturbation, or an ``eps``
            at which a sample stops once it has a success inside the ball.
        search_steps: L-BFGS-B solves per sample, one per constant c.
        max_iter: L-BFGS-B iterations per solve (at most 2·``max_iter`` evaluations, plus
            one line search).
        initial_const: c₀.
        memory: L-BFGS memory, the number of correction pairs kept (scipy's ``maxcor``).
        tol: a solve stops when an iteration lowers the objective by less than ``tol`` times
            max(|objective|, 1) (scipy's ``ftol``; its default 2.2e-9 costs ~50 % more
            evaluations on MNIST for distances within 0.2 %).
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack`` (the attack uses no
            randomness).
    """

    name: ClassVar[str] = "lbfgs"
    norms: ClassVar[tuple[str, ...]] = ("l2",)

    def __init__(
        self,
        threat: ThreatModel,
        *,
        search_steps: int = 10,
        max_iter: int = 50,
        initial_const: float = 1.0,
        memory: int = 10,
        tol: float = 1e-6,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        self.search_steps = checks.positive_int("search_steps", search_steps)
        self.max_iter = checks.positive_int("max_iter", max_iter)
        self.memory = checks.positive_int("memory", memory)
        checks.positive("initial_const", initial_const)
        self.initial_const = float(initial_const)
        checks.non_negative("tol", tol)
        self.tol = float(tol)

    def _run(self, run: Tracker) -> None:
        with threadpool_limits(limits=1, user_api="blas"):
            self._solve(run)

    def _solve(self, run: Tracker) -> None:
        lo, hi = self.threat.bounds
        max_fun = 2 * self.max_iter
        options = {
            "maxiter": self.max_iter,
            "maxfun": max_fun,
            "maxcor": self.memory,
            "ftol": self.tol,
        }
        rows = run.rows.tolist()
        index = {r: i for i, r in enumerate(rows)}  # row of the batch → row of the search
        search = _Search(len(rows), self.initial_const, increasing=False, dtype=torch.float64)
        solves = [0] * len(rows)
        x64 = run.x.detach().flatten(1).double().cpu().numpy()
        workers: dict[int, _Coroutine] = {}
        requests: dict[int, object] = {}
        try:
            for i, r in enumerate(rows):
                workers[r] = _Coroutine(_Solver(lo - x64[i], hi - x64[i], options))
                requests[r] = workers[r].start()
            # every solve takes at most max_fun evaluations, one line search and one re-check
            rounds = run.steps(self.search_steps * (max_fun + _MAX_LINE_SEARCH + 1))
            while True:
                self._next_constants(rows, requests, workers, search, solves, index)
                ended = [requests[r] is _DONE for r in rows]
                if any(ended):
                    run.retire(torch.tensor(ended, device=run.rows.device))
                    run.shrink()
                    rows = run.rows.tolist()
                if next(rounds, None) is None:
                    break
                self._evaluate(run, rows, requests, workers)
                rows = run.rows.tolist()
        finally:
            for w in workers.values():
                w.stop()
        for w in workers.values():
            if w.error is not None:
                raise w.error

    def _next_constants(
        self,
        rows: list[int],
        requests: dict[int, object],
        workers: dict[int, _Coroutine],
        search: ConstantSearch,
        solves: list[int],
        index: dict[int, int],
    ) -> None:
        """Answer the workers that finished a solve: the next c, or stop after the last."""
        solved = [r for r in rows if isinstance(requests[r], _Solved)]
        if not solved:
            return
        results = {r: cast(_Solved, requests[r]).success for r in solved}
        later = [r for r in solved if results[r] is not None]
        if later:
            search.update(
                torch.tensor([index[r] for r in later]),
                torch.tensor([bool(results[r]) for r in later]),
            )
            for r in later:
                solves[index[r]] += 1
        constants = search.c.tolist()
        for r in solved:
            if solves[index[r]] >= self.search_steps:
                workers[r].stop()
                requests[r] = _DONE
            else:
                requests[r] = workers[r].send(constants[index[r]])

    def _evaluate(
        self,
        run: Tracker,
        rows: list[int],
        requests: dict[int, object],
        workers: dict[int, _Coroutine],
    ) -> None:
        """One batched forward + backward at every active sample's requested δ."""
        points = np.stack([cast(np.ndarray, requests[r]) for r in rows])
        delta = torch.from_numpy(points).to(device=run.x.device, dtype=run.x.dtype)
        logits, values, grad = run.value_and_grad(delta.view_as(run.x), _log_success_probability)
        success = succeeded(logits.argmax(dim=1), run.y, run.target, self.threat.targeted)
        finished = run.done[run.rows].tolist()  # succeeded inside the ε-ball (early stop)
        values64 = values.double().cpu().numpy()
        grad64 = grad.flatten(1).double().cpu().numpy()
        success_list = success.tolist()
        run.shrink()
        for i, r in enumerate(rows):
            if finished[i]:
                workers[r].stop()
                requests[r] = _DONE
            else:
                reply = (float(values64[i]), grad64[i], bool(success_list[i]))
                requests[r] = workers[r].send(reply)
