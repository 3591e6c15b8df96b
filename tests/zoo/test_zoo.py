"""Tests for advex.zoo: shipped weights and cards, load / load_file, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from advex import Classifier, data, zoo
from advex.zoo.train import shipped_command

NAMES = [
    "mnist_cnn",
    "mnist_mlp",
    "mnist_cnn_pgd",
    "mnist_wide_pgd",
    "mnist_cnn_trades",
    "digits_mlp",
]
ROBUST = {"mnist_cnn_pgd", "mnist_wide_pgd", "mnist_cnn_trades"}


def test_list_models_cards() -> None:
    cards = zoo.list_models()
    assert [c.name for c in cards] == NAMES
    for card in cards:
        assert isinstance(card, zoo.ModelCard)
        assert card.architecture in zoo.ARCHITECTURES
        assert card.dataset in data.DATASETS
        assert card.input_shape == zoo.ARCHITECTURES[card.architecture].input_shape
        assert card.num_classes == 10
        assert 0.9 <= card.clean_accuracy <= 1.0
        assert card.training_command == shipped_command(card.name)
        assert card.train_seconds > 0
        assert card.description
        with pytest.raises(dataclasses.FrozenInstanceError):
            card.name = "x"  # type: ignore[misc]
    robust = {c.name: c for c in cards if c.robust_accuracy is not None}
    assert set(robust) == ROBUST
    for pgd in robust.values():
        assert pgd.robust_attack is not None and "PGD" in pgd.robust_attack
        assert "eps=0.3" in pgd.robust_attack and "steps=40" in pgd.robust_attack
        assert pgd.robust_accuracy is not None and pgd.robust_accuracy >= 0.5


@pytest.mark.parametrize("name", NAMES)
def test_weights_files_small_with_metadata(name: str) -> None:
    path = zoo.weights_path(name)
    assert path.suffix == ".safetensors"
    assert path.stat().st_size < 3 * 1024 * 1024
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    for key in ("architecture", "dataset", "training_command", "seed", "clean_accuracy"):
        assert key in meta
    assert meta["architecture"] == zoo.MODELS[name].architecture
    assert meta["dataset"] == zoo.MODELS[name].dataset


@pytest.mark.parametrize("name", NAMES)
def test_card_file_states_the_numbers(name: str) -> None:
    card = next(c for c in zoo.list_models() if c.name == name)
    text = zoo.card_path(name).read_text(encoding="utf-8")
    assert f"{100 * card.clean_accuracy:.1f}%" in text
    assert card.training_command in text
    assert "forward+backward" in text
    if card.robust_accuracy is not None:
        assert f"{100 * card.robust_accuracy:.1f}%" in text


@pytest.mark.parametrize("name", NAMES)
def test_load_matches_card(name: str) -> None:
    """The shipped weights are the ones the card describes: same test accuracy (±0.5 points)."""
    card = next(c for c in zoo.list_models() if c.name == name)
    model = zoo.load(name)
    assert isinstance(model, Classifier)
    assert not model.training and not model.module.training
    assert model.bounds == (0.0, 1.0)
    assert model.num_classes == card.num_classes
    x, y = data.load(card.dataset, split="test")
    assert x.shape[1:] == card.input_shape
    with torch.no_grad():
        logits = model(x[:7])
    assert logits.shape == (7, card.num_classes)
    assert logits.dtype == torch.float32
    acc = float((model.predict(x) == y).float().mean())
    assert acc >= card.clean_accuracy - 0.005


def test_zoo_prefix_alias() -> None:
    a, b = zoo.load("zoo:digits_mlp"), zoo.load("digits_mlp")
    x, _ = data.load("digits", split="test")
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", ["resnet50", "zoo:nope", "", "ZOO:mnist_cnn"])
def test_unknown_name_lists_known(name: str) -> None:
    with pytest.raises(ValueError, match=r"unknown zoo model.*mnist_cnn.*digits_mlp"):
        zoo.load(name)


def test_name_must_be_str() -> None:
    with pytest.raises(TypeError, match="name"):
        zoo.load(3)  # type: ignore[arg-type]


def test_loading_never_unpickles(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    for name in NAMES:
        zoo.load(name)


# ----- load_file ---------------------------------------------------------------------------


def _same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...] = (1, 8, 8)) -> bool:
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_load_file_safetensors_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zoo.architectures.build("digits_mlp")
    path = tmp_path / "mine.safetensors"
    save_file(net.state_dict(), str(path))
    model = zoo.load_file(path, "digits_mlp")
    assert isinstance(model, Classifier)
    assert not model.training
    assert model.num_classes == 10
    assert _same_outputs(model, net.eval())


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_load_file_torch_state_dict(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    net = zoo.architectures.build("digits_mlp")
    path = tmp_path / f"mine{suffix}"
    torch.save(net.state_dict(), path)
    assert _same_outputs(zoo.load_file(str(path), "digits_mlp"), net.eval())


def test_load_file_accepts_wrapper_and_classifier_prefix(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = zoo.architectures.build("digits_mlp")
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": net.state_dict()}, wrapped)
    assert _same_outputs(zoo.load_file(wrapped, "digits_mlp"), net.eval())
    prefixed = tmp_path / "clf.safetensors"
    save_file(Classifier(net).state_dict(), str(prefixed))  # keys "module.fc1.weight", ...
    assert _same_outputs(zoo.load_file(prefixed, "digits_mlp"), net.eval())


def test_load_file_refuses_pickled_modules(tmp_path: Path) -> None:
    path = tmp_path / "whole_module.pt"
    torch.save(zoo.architectures.build("digits_mlp"), path)
    with pytest.raises(ValueError, match="never unpickled"):
        zoo.load_file(path, "digits_mlp")


def test_load_file_errors(tmp_path: Path) -> None:
    net = zoo.architectures.build("digits_mlp")
    good = tmp_path / "good.safetensors"
    save_file(net.state_dict(), str(good))
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        zoo.load_file(tmp_path / "missing.safetensors", "digits_mlp")
    with pytest.raises(ValueError, match=r"unknown 'vgg16'.*digits_mlp"):
        zoo.load_file(good, "vgg16")
    with pytest.raises(ValueError, match=r"fit architecture MnistMLP.*missing keys"):
        zoo.load_file(good, "mnist_mlp")
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"suffix '.bin'"):
        zoo.load_file(odd, "digits_mlp")

    state = dict(net.state_dict())
    state["fc1.weight"] = torch.zeros(32, 65)
    shapes = tmp_path / "shapes.safetensors"
    save_file(state, str(shapes))
    with pytest.raises(ValueError, match=r"shape mismatches.*fc1.weight: file \(32, 65\)"):
        zoo.load_file(shapes, "digits_mlp")

    state = dict(net.state_dict())
    state["extra"] = torch.zeros(1)
    extra = tmp_path / "extra.safetensors"
    save_file(state, str(extra))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        zoo.load_file(extra, "digits_mlp")

    state = dict(net.state_dict())
    state["fc1.bias"] = torch.zeros(32, dtype=torch.int64)
    ints = tmp_path / "ints.safetensors"
    save_file(state, str(ints))
    with pytest.raises(TypeError, match=r"fc1.bias has dtype"):
        zoo.load_file(ints, "digits_mlp")

    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(TypeError, match="does not hold a state dict"):
        zoo.load_file(tensor_only, "digits_mlp")


# ----- architectures -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(zoo.ARCHITECTURES))
def test_architectures_output_logits(name: str) -> None:
    torch.manual_seed(0)
    net = zoo.architectures.build(name)
    x = torch.rand(4, *net.input_shape)
    out = net(x)
    assert out.shape == (4, net.num_classes)
    assert not any(isinstance(m, nn.Softmax | nn.LogSoftmax) for m in net.modules())


def test_mnist_mlp_is_784_100_100_10() -> None:
    net = zoo.architectures.build("mnist_mlp")
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 100), (100, 100), (100, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 2


def test_digits_mlp_is_64_32_10() -> None:
    net = zoo.architectures.build("digits_mlp")
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 32), (32, 10)]


def test_build_unknown_architecture() -> None:
    with pytest.raises(ValueError, match=r"unknown name 'lenet'.*mnist_cnn"):
        zoo.architectures.build("lenet")
