"""Tests for advex.zoo.train on short recipes (the real ones take minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from advex import zoo
from advex.zoo import train as zoo_train

SHORT = zoo_train.Recipe(epochs=1, batch_size=64, lr=1e-2, seed=3)


def _quiet(_: str) -> None:
    pass


def test_shift_batch_moves_content_and_pads_with_zeros() -> None:
    x = torch.zeros(50, 1, 6, 6)
    x[:, 0, 2, 3] = 1.0
    gen = torch.Generator().manual_seed(0)
    out = zoo_train.shift_batch(x, 2, gen)
    assert out.shape == x.shape
    # one bright pixel per image, moved by at most 2 in each direction
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(50))
    pos = out[:, 0].flatten(1).argmax(dim=1)
    rows, cols = pos // 6, pos % 6
    assert bool(((rows - 2).abs() <= 2).all()) and bool(((cols - 3).abs() <= 2).all())
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5
    again = zoo_train.shift_batch(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert zoo_train.shift_batch(x, 0, gen) is x


def test_shift_batch_edges_are_zero_filled() -> None:
    x = torch.ones(200, 3, 4, 4)
    out = zoo_train.shift_batch(x, 1, torch.Generator().manual_seed(1))
    assert float(out.min()) == 0.0  # some image shifted: a zero row or column appears
    assert torch.equal(out[:, 0], out[:, 1])  # channels shift together


def test_train_is_deterministic() -> None:
    a, _ = zoo_train.train("digits_mlp", SHORT, log=_quiet)
    b, _ = zoo_train.train("digits_mlp", SHORT, log=_quiet)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)
    assert not a.training


def test_train_and_save_writes_weights_and_card(tmp_path: Path) -> None:
    recipe = zoo_train.Recipe(
        epochs=1, batch_size=256, lr=1e-2, adv_eps=0.1, ramp_epochs=1, pgd_steps=2
    )
    zoo_train.train_and_save("digits_mlp", tmp_path, recipe=recipe, log=_quiet)
    weights = tmp_path / "weights" / "digits_mlp.safetensors"
    card = tmp_path / "cards" / "digits_mlp.md"
    assert weights.is_file() and card.is_file()
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    assert meta["architecture"] == "digits_mlp"
    assert "recipe=Recipe(" in meta["training_command"]  # not the shipped command
    assert 0.0 <= float(meta["clean_accuracy"]) <= 1.0
    assert 0.0 <= float(meta["robust_accuracy"]) <= float(meta["clean_accuracy"])
    assert meta["robust_attack"].startswith("PGD(")
    model = zoo.load_file(weights, "digits_mlp")
    assert model.num_classes == 10
    text = card.read_text(encoding="utf-8")
    assert "robust accuracy" in text and "forward+backward" in text
    assert text.count("robust accuracy under") == 3  # PGD-40, FGSM, PGD-100 x 5 restarts
    # the card describes a recipe: without one, only the shipped recipe's weights qualify
    with pytest.raises(ValueError, match="not the shipped recipe"):
        zoo_train.write_card("digits_mlp", tmp_path, log=_quiet)


def test_main_requires_a_choice() -> None:
    with pytest.raises(SystemExit):
        zoo_train.main([])
    with pytest.raises(SystemExit):
        zoo_train.main(["--model", "resnet"])


ARGS = zoo_train._args(
    "--arch digits_mlp --data digits --objective pgd --eps 0.1 --steps 2 --epochs 1 --val-n 0"
)


def test_a_recipe_that_is_an_advex_train_command(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The zoo takes a finished `advex train` run only when it was made by the recipe's args."""
    from typer.testing import CliRunner

    from advex.cli import app

    out = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["advex", "train", *ARGS, "--out", str(out)])
    result = CliRunner().invoke(app, ["train", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, seconds = zoo_train.train_with_cli("digits_mlp", ARGS, log=_quiet, from_run=out)
    saved = zoo.load_file(out / "model.safetensors", "digits_mlp").module
    pairs = zip(model.parameters(), saved.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert seconds > 0
    other = (*ARGS[:-2], "--val-n", "10")
    with pytest.raises(ValueError, match="not by the recipe"):
        zoo_train.train_with_cli("digits_mlp", other, log=_quiet, from_run=out)
    # without a finished run, the same arguments train in a temporary folder (same weights)
    again, _ = zoo_train.train_with_cli("digits_mlp", ARGS, log=_quiet)
    pairs = zip(again.parameters(), saved.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
