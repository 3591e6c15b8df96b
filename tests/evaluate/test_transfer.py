"""Transferability matrix: definitions on hand-built cases, shapes and names, errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import Tensor, nn

from advex import ThreatModel
from advex.attacks import FGSM, PGD
from advex.evaluate.transfer import TransferMatrix, transfer
from advex.oracle import as_oracle

THREAT = ThreatModel("linf", 0.2)


class Constant(nn.Module):
    """Ignores its input: always predicts class ``c``."""

    def __init__(self, c: int, k: int = 10) -> None:
        super().__init__()
        self.c, self.k = c, k

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], self.k, device=x.device)
        out[:, self.c] = 5.0 + 0 * x.flatten(1)[:, 0]
        return out


def noisy(model: nn.Module, scale: float, seed: int) -> nn.Module:
    """A copy of ``model`` with Gaussian noise of std ``scale`` on every weight: it mostly
    agrees with the model, but not everywhere."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


@pytest.fixture
def setup(tiny_mlp: nn.Module, images: Tensor) -> tuple[nn.Module, Tensor, Tensor]:
    y = labels(tiny_mlp, images)
    y[:3] = (y[:3] + 1) % 10  # three samples the source gets wrong when clean
    return tiny_mlp, images, y


def test_identical_source_and_target_transfer_fully(setup) -> None:
    model, x, y = setup
    m = transfer({"a": model}, {"a": model, "b": model}, FGSM(THREAT), x, y)
    broken = m.results["a"].success & m.results["a"].clean_correct
    assert int(broken.sum()) > 0
    assert m.rates.tolist() == [[1.0, 1.0]]
    assert m.counts.tolist() == [[int(broken.sum())] * 2]
    # error rate on all samples: the three clean errors stay errors (x' = x) + the broken ones
    want = float((labels(model, m.results["a"].x_adv) != y).double().mean())
    assert m.error_rates.tolist() == [[want, want]]
    assert m.source_success.tolist() == [m.results["a"].success_rate]


def test_a_target_that_ignores_its_input_is_never_fooled(setup) -> None:
    model, x, y = setup
    c = int(y[5])  # a class some samples have
    m = transfer([model], {"const": Constant(c), "absent": Constant(11, k=12)}, FGSM(THREAT), x, y)
    correct = y == c
    broken = m.results["0"].success & m.results["0"].clean_correct
    assert m.counts.tolist() == [[int((broken & correct).sum()), 0]]
    assert m.rates[0, 0] == 0.0  # it says c wherever y = c, before and after
    assert math.isnan(float(m.rates[0, 1]))  # no sample is clean-correct on it
    torch.testing.assert_close(
        m.error_rates, torch.tensor([[1 - float(correct.double().mean()), 1.0]]).double()
    )
    torch.testing.assert_close(
        m.target_accuracy, torch.tensor([float(correct.double().mean()), 0.0]).double()
    )


def test_rates_match_an_independent_count(setup) -> None:
    """Two sources, three targets; every cell recomputed from raw forward passes."""
    model, x, y = setup
    other = noisy(model, 0.05, 5)
    sources = {"tiny": model, "other": other}
    targets = {"tiny": model, "other": other, "third": noisy(model, 0.1, 6)}
    m = transfer(sources, targets, PGD(THREAT, steps=5), x, y)
    assert bool((m.counts > 0).all()) and bool(((m.rates > 0) & (m.rates < 1)).any())
    assert m.sources == ("tiny", "other") and m.targets == ("tiny", "other", "third")
    assert m.rates.shape == m.counts.shape == m.error_rates.shape == (2, 3)
    assert m.rates.dtype == torch.float64 and m.counts.dtype == torch.long
    for i, s in enumerate(sources.values()):
        x_adv = m.results[m.sources[i]].x_adv
        broken = (labels(s, x) == y) & (labels(s, x_adv) != y)
        for j, t in enumerate(targets.values()):
            keep = broken & (labels(t, x) == y)
            fooled = labels(t, x_adv) != y
            assert int(m.counts[i, j]) == int(keep.sum())
            if bool(keep.any()):
                assert float(m.rates[i, j]) == pytest.approx(float(fooled[keep].double().mean()))
            assert float(m.error_rates[i, j]) == pytest.approx(float(fooled.double().mean()))
    assert m.rate("tiny", "tiny") == 1.0 and m.rate("other", "other") == 1.0
    assert m.rate("tiny", "third") == float(m.rates[0, 2])


def test_targeted_success_means_the_target_label(tiny_mlp: nn.Module, images: Tensor) -> None:
    threat = ThreatModel("linf", 0.3, targeted=True)
    y = labels(tiny_mlp, images)
    target = (y + 1) % 10
    other = noisy(tiny_mlp, 0.05, 7)
    m = transfer([tiny_mlp], [tiny_mlp, other], PGD(threat, steps=10), images, y, target=target)
    x_adv = m.results["0"].x_adv
    hit = labels(tiny_mlp, x_adv) == target
    assert int(hit.sum()) > 0 and float(m.rates[0, 0]) == 1.0
    keep = hit & (labels(other, images) == y)
    assert int(m.counts[0, 1]) == int(keep.sum()) > 0
    want = float((labels(other, x_adv) == target)[keep].double().mean())
    assert float(m.rates[0, 1]) == pytest.approx(want)


def test_oracle_targets_and_black_box_attacks(setup) -> None:
    model, x, y = setup
    m = transfer({"m": model}, {"oracle": as_oracle(model, "label")}, FGSM(THREAT), x, y)
    assert m.rates.tolist() == [[1.0]]


def test_to_dict_and_table(setup) -> None:
    model, x, y = setup
    m = transfer({"tiny": model}, {"tiny": model, "never": Constant(11, k=12)}, FGSM(THREAT), x, y)
    d = m.to_dict()
    json.dumps(d)  # NaN became None
    assert d["sources"] == ["tiny"] and d["targets"] == ["tiny", "never"]
    assert d["rates"] == [[1.0, None]] and d["n"] == 16 and d["attack"] == "fgsm"
    text = str(m)
    assert "tiny" in text and "never" in text and "1.000" in text and "—" in text
    rows = text.splitlines()
    assert len(rows) == 3 and rows[1].startswith("source \\ target")
    assert isinstance(m, TransferMatrix)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"source_models": {}}, "source_models"),
        ({"source_models": []}, "source_models"),
        ({"source_models": "model"}, "source_models"),
        ({"target_models": {"a": "not a model"}}, "target_models"),
        ({"target_models": {"": "m"}}, "target_models"),
        ({"attack": "fgsm"}, "attack"),
        ({"x": "images"}, "x"),
        ({"x": "out_of_box"}, "x"),
        ({"y": "short"}, "y"),
        ({"target": "given"}, "target"),
    ],
)
def test_bad_inputs(change, match, setup) -> None:
    model, x, y = setup
    args = {
        "source_models": {"m": model},
        "target_models": {"m": model},
        "attack": FGSM(THREAT),
        "x": x,
        "y": y,
    }
    target = None
    for key, value in change.items():
        if value == "images":
            args[key] = x.numpy()
        elif value == "out_of_box":
            args[key] = x + 2
        elif value == "short":
            args[key] = y[:3]
        elif value == "given":
            target = (y + 1) % 10
        elif key == "target_models" and value == {"": "m"}:
            args[key] = {"": model}
        else:
            args[key] = value
    with pytest.raises(ValueError, match=match):
        transfer(**args, target=target)


def test_targeted_attack_needs_targets(setup) -> None:
    model, x, y = setup
    with pytest.raises(ValueError, match="target"):
        transfer([model], [model], FGSM(ThreatModel("linf", 0.1, targeted=True)), x, y)


def test_unknown_name(setup) -> None:
    model, x, y = setup
    m = transfer({"a": model}, {"b": model}, FGSM(THREAT), x, y)
    with pytest.raises(ValueError, match="target"):
        m.rate("a", "a")
