"""Classifier (modes, frozen parameters, normalization, counting, output checks), check_inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from advex import Classifier, as_classifier
from advex.model import ProbabilityOutputWarning, check_inputs


# ----- attacking(): eval mode and frozen parameters, restored ------------------------------
def _modes(module: nn.Module) -> list[bool]:
    return [m.training for m in module.modules()]


def test_attacking_sets_eval_and_restores_each_submodule(tiny_cnn: nn.Module) -> None:
    tiny_cnn.train()
    tiny_cnn[1].eval()  # a mixed module: BatchNorm in eval, the rest in train
    before = _modes(tiny_cnn)
    assert any(before) and not all(before)
    clf = Classifier(tiny_cnn)
    wrapper_mode = clf.training
    with clf.attacking() as inner:
        assert inner is clf
        assert not any(_modes(clf)), "some submodule still in train mode"
        assert not any(p.requires_grad for p in clf.parameters())
    assert _modes(tiny_cnn) == before
    assert clf.training == wrapper_mode
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_attacking_restores_requires_grad_flags_individually(tiny_mlp: nn.Module) -> None:
    tiny_mlp[1].weight.requires_grad_(False)  # a partly frozen network stays partly frozen
    flags = [p.requires_grad for p in tiny_mlp.parameters()]
    clf = Classifier(tiny_mlp)
    with clf.attacking():
        pass
    assert [p.requires_grad for p in tiny_mlp.parameters()] == flags
    assert flags.count(False) == 1


def test_attacking_restores_after_an_exception(tiny_cnn: nn.Module) -> None:
    tiny_cnn.train()
    tiny_cnn[4].eval()
    before = _modes(tiny_cnn)
    clf = Classifier(tiny_cnn)
    with pytest.raises(RuntimeError, match="boom"), clf.attacking():
        raise RuntimeError("boom")
    assert _modes(tiny_cnn) == before
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_channels_last_while_attacking_then_restored(tiny_cnn: nn.Module, images) -> None:
    weight = tiny_cnn[0].weight
    ptr, strides = weight.data_ptr(), weight.stride()
    clf = Classifier(tiny_cnn)
    assert clf.channels_last  # on by default for a module with a Conv2d
    tiny_cnn.eval()
    with torch.no_grad():
        reference = tiny_cnn(images)
    with torch.no_grad(), clf.attacking():
        assert weight.stride() == weight.data.to(memory_format=torch.channels_last).stride()
        with clf.attacking():  # re-entrant: the inner context changes nothing
            inner = clf(images)
        assert weight.stride() != strides
        logits = clf(images)
    assert weight.data_ptr() == ptr and weight.stride() == strides  # the original is back
    assert torch.allclose(logits, reference, atol=1e-5) and torch.equal(inner, logits)
    assert not Classifier(tiny_cnn, channels_last=False).channels_last
    assert not Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))).channels_last


def test_eval_mode_really_changes_the_output(tiny_cnn: nn.Module, images) -> None:
    """Dropout/BatchNorm make train and eval outputs differ; attacking() gives the eval one."""
    tiny_cnn.eval()
    with torch.no_grad():
        want = tiny_cnn(images)
    tiny_cnn.train()
    clf = Classifier(tiny_cnn)
    with torch.no_grad(), clf.attacking():
        got = clf(images)
        got_again = clf(images)
    torch.testing.assert_close(got, want)
    assert torch.equal(got, got_again)
    assert tiny_cnn.training


def test_predict_is_argmax_and_keeps_mode(tiny_cnn: nn.Module, images) -> None:
    tiny_cnn.train()
    clf = Classifier(tiny_cnn)
    pred = clf.predict(images, batch_size=5)
    tiny_cnn.eval()
    with torch.no_grad():
        want = tiny_cnn(images).argmax(dim=1)
    assert torch.equal(pred, want)
    assert pred.shape == (16,) and pred.dtype == torch.long


# ----- normalization, counting -------------------------------------------------------------
def test_normalization_is_applied_inside() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    clf = Classifier(net, mean=mean, std=std)
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), net(manual))
        # and it is not the identity: without normalization the output differs
        assert not torch.allclose(Classifier(net)(x), net(manual))


def test_mean_only_and_tensor_normalization() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    x = torch.rand(3, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor([0.1, 0.9]).view(1, 2, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(Classifier(net, mean=mean)(x), net(x - mean))


def test_forward_count_counts_samples(tiny_mlp: nn.Module, images) -> None:
    clf = Classifier(tiny_mlp)
    assert clf.forward_count == 0
    with torch.no_grad():
        clf(images)
        clf(images[:3])
    assert clf.forward_count == 16 + 3


def test_num_classes_inferred_from_first_forward(tiny_mlp: nn.Module, images) -> None:
    clf = Classifier(tiny_mlp)
    assert clf.num_classes is None
    with torch.no_grad():
        clf(images[:2])
    assert clf.num_classes == 10


def test_as_classifier(tiny_mlp: nn.Module) -> None:
    clf = Classifier(tiny_mlp)
    assert as_classifier(clf) is clf
    wrapped = as_classifier(tiny_mlp, bounds=(-1.0, 1.0))
    assert isinstance(wrapped, Classifier) and wrapped.module is tiny_mlp
    assert wrapped.bounds == (-1.0, 1.0)
    with pytest.raises(TypeError, match="model"):
        as_classifier(lambda x: x)
    with pytest.raises(TypeError, match="module"):
        Classifier("not a module")  # type: ignore[arg-type]


# ----- output checks ------------------------------------------------------------------------
def test_probability_outputs_warn(tiny_mlp: nn.Module, images) -> None:
    clf = Classifier(nn.Sequential(tiny_mlp, nn.Softmax(dim=1)))
    with pytest.warns(ProbabilityOutputWarning, match="probabilities"), torch.no_grad():
        clf(images)


def test_logits_do_not_warn(tiny_mlp: nn.Module, images) -> None:
    clf = Classifier(tiny_mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            clf(images)


@pytest.mark.parametrize(
    "make_output",
    [
        lambda x: x.flatten(1).sum(1),  # (B,)
        lambda x: x,  # (B, 1, 8, 8)
        lambda x: x.flatten(1)[:1],  # (1, 64): wrong batch size
        lambda x: (x.flatten(1),),  # a tuple
    ],
    ids=["1d", "4d", "batch", "tuple"],
)
def test_output_must_be_batch_by_classes(make_output, images) -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor):
            return make_output(x)

    with pytest.raises(ValueError, match=r"model output.*\(B, K\)"), torch.no_grad():
        Classifier(Net())(images)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"std": [1.0, 0.0, 1.0]}, "std"),
        ({"std": [-0.5]}, "std"),
        ({"std": [float("nan")]}, "std"),
        ({"mean": [float("inf")]}, "mean"),
    ],
)
def test_bad_normalization_raises(kwargs: dict, name: str, tiny_mlp: nn.Module) -> None:
    with pytest.raises(ValueError, match=name):
        Classifier(tiny_mlp, **kwargs)


# ----- check_inputs -------------------------------------------------------------------------
X = torch.full((4, 1, 2, 2), 0.5)
Y = torch.tensor([0, 1, 2, 3])
BAD_INPUTS = [
    # (x, y, target, error type, message fragment)
    (X.numpy(), Y, None, TypeError, r"^x: expected a torch\.Tensor"),
    (X.long(), Y, None, TypeError, r"^x: expected a floating-point"),
    (torch.full((4,), 0.5), Y, None, ValueError, r"^x: expected shape \(B, \.\.\.\)"),
    (torch.zeros(0, 1, 2, 2), Y[:0], None, ValueError, r"^x: the batch is empty"),
    (X.clone().index_fill_(0, torch.tensor([2]), float("nan")), Y, None, ValueError, "NaN"),
    (X.clone().index_fill_(0, torch.tensor([1]), float("inf")), Y, None, ValueError, "Inf"),
    (X + 0.6, Y, None, ValueError, r"^x: values must lie in bounds \[0, 1\]"),
    (X - 0.6, Y, None, ValueError, r"^x: values must lie in bounds"),
    (X, Y.float(), None, TypeError, r"^y: expected an integer tensor"),
    (X, Y.bool(), None, TypeError, r"^y: expected an integer tensor"),
    (X, [0, 1, 2, 3], None, TypeError, r"^y: expected a torch\.Tensor"),
    (X, Y.view(2, 2), None, ValueError, r"^y: expected shape \(B,\)"),
    (X, Y[:3], None, ValueError, r"^y: has 3 labels for a batch of 4"),
    (X, torch.tensor([0, -1, 2, 3]), None, ValueError, r"^y: labels must be >= 0"),
    (X, torch.tensor([0, 1, 2, 10]), None, ValueError, r"^y: labels must be < num_classes=10"),
    (X, Y, Y.float(), TypeError, r"^target: expected an integer tensor"),
    (X, Y, Y[:2], ValueError, r"^target: has 2 labels"),
    (X, Y, Y.view(4, 1), ValueError, r"^target: expected shape"),
    (X, Y, torch.tensor([1, 2, 3, -4]), ValueError, r"^target: labels must be >= 0"),
    (X, Y, torch.tensor([1, 2, 3, 11]), ValueError, r"^target: labels must be < num_classes"),
    (X, Y, 3, TypeError, r"^target: expected a torch\.Tensor"),
]


@pytest.mark.parametrize(("x", "y", "target", "error", "match"), BAD_INPUTS)
def test_check_inputs_rejects(x, y, target, error, match) -> None:
    with pytest.raises(error, match=match):
        check_inputs(x, y, bounds=(0.0, 1.0), num_classes=10, target=target)


def test_check_inputs_accepts_and_coerces() -> None:
    x = X.clone()
    x[0] = 1.0 + 5e-7  # within the tolerance of the bound
    x2, y2, t2 = check_inputs(x, Y.int(), bounds=(0.0, 1.0), num_classes=4, target=Y.flip(0))
    assert x2 is x
    assert y2.dtype == torch.long and torch.equal(y2, Y)
    assert t2 is not None and torch.equal(t2, Y.flip(0))
    assert check_inputs(X, Y, bounds=(0.0, 1.0))[2] is None


def test_check_inputs_other_bounds() -> None:
    x = torch.full((2, 3), -0.5)
    check_inputs(x, torch.tensor([0, 1]), bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match=r"bounds \[0, 1\]"):
        check_inputs(x, torch.tensor([0, 1]), bounds=(0.0, 1.0))
