"""The batched Adam and the per-sample binary search over the trade-off constant."""

from __future__ import annotations

import math

import pytest
import torch

from advex.attacks.optim import Adam
from advex.attacks.search import ConstantSearch


def test_adam_matches_torch_adam() -> None:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, generator=g)
    grads = [torch.randn(4, 3, generator=g) for _ in range(5)]
    ours = Adam(0.1)
    w = w0.clone()
    ref = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.1)
    for grad in grads:
        w = ours.step(w, grad)
        ref.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(w, ref.detach())


def test_adam_keep_drops_rows_and_their_state() -> None:
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(3, 2, generator=g)
    grads = [torch.randn(3, 2, generator=g) for _ in range(4)]
    full = Adam(0.05)
    part = Adam(torch.tensor([0.05, 0.05, 0.05]))
    w_full, w_part = w0.clone(), w0.clone()
    for i, grad in enumerate(grads):
        w_full = full.step(w_full, grad)
        if i == 1:
            keep = torch.tensor([True, False, True])
            part.keep(keep)
            w_part = w_part[keep]
        w_part = part.step(w_part, grad if i < 1 else grad[[0, 2]])
    torch.testing.assert_close(w_part, w_full[[0, 2]])


def test_adam_per_sample_learning_rates() -> None:
    opt = Adam(torch.tensor([0.1, 0.0]))
    w = opt.step(torch.zeros(2, 1), torch.ones(2, 1))
    torch.testing.assert_close(w, torch.tensor([[-0.1], [0.0]]), atol=1e-6, rtol=0)


def test_adam_restarts_rows_independently() -> None:
    """A restarted row behaves like a fresh Adam; the other rows carry on."""
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    a, fresh = Adam(0.1), Adam(0.1)
    w = torch.zeros(2, 2)
    for _ in range(3):
        w = a.step(w, g * torch.tensor([[1.0], [-1.0]]))
    a.reset(torch.tensor([True, False]))
    w1 = a.step(w, g)
    w_fresh = fresh.step(w[:1], g[:1])
    torch.testing.assert_close(w1[:1], w_fresh)
    a.keep(torch.tensor([False, True]))
    assert a.m is not None and a.m.shape == (1, 2) and a.t is not None and a.t.tolist() == [4]


def test_adam_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="lr"):
        Adam(0.0)
    with pytest.raises(ValueError, match="betas"):
        Adam(0.1, betas=(1.0, 0.9))


def test_constant_search_grows_until_success_then_bisects() -> None:
    """Sample 0 succeeds for c ≥ 3 (unknown to the search): c₀ = 1 → 10 → 5.5 → 3.25 → ..."""
    search = ConstantSearch(2, 1.0)
    rows = torch.arange(2)
    seen = []
    for _ in range(12):
        c = search.c.clone()
        seen.append(float(c[0]))
        search.update(rows, c >= torch.tensor([3.0, 0.5]))
    assert seen[:4] == [1.0, 10.0, 5.5, 3.25]
    assert abs(float(search.upper[0]) - 3.0) < 0.01 and float(search.lower[0]) < 3.0
    assert float(search.upper[0]) >= 3.0 and bool(search.found().all())
    # sample 1 succeeds already at c₀ = 1 and bisects toward 0.5 from above
    assert 0.5 <= float(search.upper[1]) < 0.51


def test_constant_search_updates_only_the_given_rows() -> None:
    search = ConstantSearch(3, 2.0)
    search.update(torch.tensor([1]), torch.tensor([False]))
    assert search.c.tolist() == [2.0, 20.0, 2.0]
    assert not bool(search.found().any())


def test_constant_search_decreasing_form() -> None:
    """c·D + L: success needs c ≤ 0.2; the search looks for the largest such c."""
    search = ConstantSearch(1, 1.0, increasing=False)
    rows = torch.arange(1)
    for _ in range(20):
        search.update(rows, search.c <= 0.2)
    assert bool(search.found().all())
    best = 1 / float(search.upper[0])  # the largest c known to succeed
    assert 0.19 < best <= 0.2


@pytest.mark.parametrize(
    ("kw", "match"), [({"initial": 0.0}, "initial"), ({"factor": 1.0}, "factor")]
)
def test_constant_search_rejects_bad_settings(kw, match) -> None:
    args = {"initial": 1.0, "factor": 10.0} | kw
    with pytest.raises(ValueError, match=match):
        ConstantSearch(2, args["initial"], factor=args["factor"])


def test_constant_search_keeps_growing_while_every_run_fails() -> None:
    search = ConstantSearch(1, 1e-3)
    for _ in range(9):
        search.update(torch.arange(1), torch.tensor([False]))
    assert math.isclose(float(search.c[0]), 1e6, rel_tol=1e-5)
    assert float(search.lower[0]) == pytest.approx(1e5) and not bool(search.found().any())
