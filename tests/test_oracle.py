"""Oracles: access levels are enforced, no gradient leaks, every point is counted."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from advex import Classifier, ThreatModel
from advex.attacks import Square
from advex.oracle import AccessError, Oracle, QueryBudgetError, as_oracle


@pytest.fixture
def x() -> Tensor:
    return torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_scores_oracle_gives_the_logits_and_counts(tiny_mlp: nn.Module, x: Tensor) -> None:
    oracle = as_oracle(tiny_mlp, "scores")
    with torch.no_grad():
        expected = tiny_mlp(x)
    assert torch.allclose(oracle.scores(x), expected)
    assert torch.equal(oracle.labels(x), expected.argmax(dim=1))
    assert torch.equal(oracle(x), oracle.scores(x[:7]))
    assert (oracle.queries, oracle.calls) == (28, 4)
    assert oracle.num_classes == 10


def test_label_oracle_exposes_labels_only(tiny_mlp: nn.Module, x: Tensor) -> None:
    oracle = as_oracle(tiny_mlp, "label")
    labels = oracle(x)
    assert labels.dtype == torch.long and labels.shape == (7,)
    with pytest.raises(AccessError, match="labels only"):
        oracle.scores(x)
    with pytest.raises(AccessError, match="gives 'label' only"):
        oracle.restrict("scores")
    with pytest.raises(AccessError):
        as_oracle(oracle, "scores")
    for name in ("module", "model", "_module", "parameters", "forward", "logits"):
        assert not hasattr(oracle, name)
    with pytest.raises(AttributeError):
        oracle.anything = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("access", ["scores", "label"])
def test_no_gradient_flows_through_an_oracle(tiny_mlp: nn.Module, x: Tensor, access) -> None:
    oracle = as_oracle(tiny_mlp, access)
    point = x.clone().requires_grad_(True)
    out = oracle(point)
    assert not out.requires_grad and out.grad_fn is None
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out.float().sum(), point)
    assert all(p.grad is None for p in tiny_mlp.parameters())


def test_restriction_shares_the_counts_and_budget(tiny_mlp: nn.Module, x: Tensor) -> None:
    oracle = as_oracle(tiny_mlp, "scores", budget=10)
    label = oracle.restrict("label")
    label(x)
    assert oracle.queries == 7 and oracle.budget_left == 3
    with pytest.raises(QueryBudgetError, match="budget of 10"):
        oracle.scores(x)
    assert oracle.queries == 7  # a refused query is not answered and not counted
    oracle.scores(x[:3])
    assert oracle.budget_left == 0


def test_module_oracle_runs_in_eval_mode_and_restores_it(tiny_cnn: nn.Module, x: Tensor) -> None:
    tiny_cnn.train()
    oracle = as_oracle(tiny_cnn, "scores")
    first, second = oracle.scores(x), oracle.scores(x)
    assert torch.equal(first, second)  # dropout off, batch-norm statistics frozen
    assert tiny_cnn.training and tiny_cnn[4].training
    with oracle.attacking():
        assert not tiny_cnn.training
        assert torch.equal(oracle.scores(x), first)
    assert tiny_cnn.training


def test_classifier_oracle_method(tiny_mlp: nn.Module, x: Tensor) -> None:
    clf = Classifier(tiny_mlp)
    oracle = clf.oracle("label", budget=7)
    assert torch.equal(oracle(x), clf.predict(x))
    with pytest.raises(QueryBudgetError):
        oracle(x[:1])


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.rand(3, 1, 8, 8) + 1.5, ValueError, r"inputs in \[0, 1\]"),
        (torch.full((3, 1, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.ones(3, 1, 8, 8, dtype=torch.long), TypeError, "floating-point"),
        (torch.rand(0, 1, 8, 8), ValueError, "non-empty"),
        (np.zeros((3, 1, 8, 8), np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_queries(tiny_mlp: nn.Module, bad, error, match) -> None:
    oracle = as_oracle(tiny_mlp, "scores")
    with pytest.raises(error, match=match):
        oracle.scores(bad)
    assert oracle.queries == 0


# ----- plain callables and ONNX Runtime ---------------------------------------------------------
def test_numpy_callable_with_scores(tiny_mlp: nn.Module, x: Tensor) -> None:
    seen: list[tuple[type, np.dtype]] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        seen.append((type(batch), batch.dtype))
        with torch.no_grad():
            return tiny_mlp(torch.from_numpy(batch)).numpy()

    oracle = as_oracle(predict, "scores")
    with torch.no_grad():
        assert torch.allclose(oracle.scores(x), tiny_mlp(x))
    assert seen == [(np.ndarray, np.dtype(np.float32))]


def test_numpy_callable_with_labels_only(tiny_mlp: nn.Module, x: Tensor) -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tiny_mlp(torch.from_numpy(batch)).argmax(dim=1).numpy()

    label = as_oracle(predict, "label")
    with torch.no_grad():
        assert torch.equal(label(x), tiny_mlp(x).argmax(dim=1))
    scores = as_oracle(predict, "scores")
    with pytest.raises(AccessError, match="labels only"):
        scores.scores(x)


@pytest.mark.parametrize(
    ("output", "match"),
    [
        (lambda b: np.zeros((len(b) + 1, 10), np.float32), "B=7"),
        (lambda b: np.full((len(b), 10), np.nan, np.float32), "NaN"),
        (lambda b: np.zeros(len(b), np.float32), "integers"),
        (lambda b: np.zeros((len(b), 2, 2), np.float32), "scores"),
    ],
)
def test_bad_callable_outputs(output, match, x: Tensor) -> None:
    with pytest.raises(ValueError, match=match):
        as_oracle(output, "label").labels(x)


def test_not_a_model() -> None:
    with pytest.raises(TypeError, match="model: expected"):
        as_oracle(42, "scores")
    with pytest.raises(ValueError, match="access: expected one of"):
        as_oracle(lambda b: b, "gradients")  # type: ignore[arg-type]


def _onnx_session(model: nn.Module, shape: tuple[int, ...]):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(2, *shape),),
        buffer,
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_runtime_session_is_attacked_like_the_module(tiny_mlp: nn.Module, x: Tensor) -> None:
    session = _onnx_session(tiny_mlp.eval(), (1, 8, 8))
    oracle = as_oracle(session, "scores")
    with torch.no_grad():
        logits = tiny_mlp(x)
    assert torch.allclose(oracle.scores(x), logits, atol=1e-5)
    y = logits.argmax(dim=1)
    threat = ThreatModel("linf", 0.3)
    via_onnx = Square(threat, max_queries=200, seed=3)(session, x, y)
    assert bool(via_onnx.success.any())
    with torch.no_grad():  # success re-decided by the torch model on the returned points
        assert torch.equal(tiny_mlp(via_onnx.x_adv).argmax(dim=1) != y, via_onnx.success)
    assert float((via_onnx.x_adv - x).abs().amax()) <= 0.3 + 1e-6


def test_oracle_constructor_checks() -> None:
    with pytest.raises(TypeError, match="fn: expected a callable"):
        Oracle(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget"):
        Oracle(lambda b: b, budget=-1)
    with pytest.raises(ValueError, match="batch_size"):
        Oracle(lambda b: b, batch_size=0)
    with pytest.raises(AccessError):
        Oracle(lambda b: b, access="scores", gives="labels")


def test_large_queries_are_chunked(tiny_mlp: nn.Module) -> None:
    calls: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        with torch.no_grad():
            return tiny_mlp(torch.from_numpy(batch)).numpy()

    oracle = as_oracle(predict, "scores", batch_size=4)
    out = oracle.scores(torch.rand(10, 1, 8, 8))
    assert out.shape == (10, 10) and calls == [4, 4, 2]
    assert (oracle.queries, oracle.calls) == (10, 1)
