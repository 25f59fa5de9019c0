"""Safe weights: safetensors + checksummed model card; foreign checkpoints only as plain tensors."""

from __future__ import annotations

import json

import pytest
import torch

from napari_medgen.engine import cache_dir, load_foreign_checkpoint, load_weights, save_weights
from napari_medgen.errors import WeightsError

CARD = {
    "family": "medgen.ssr",
    "version": "0.1.0",
    "params": {"scale": 2, "patch": [32, 32, 32]},
    "training_data": "the user's own scan (self-supervised)",
    "intended_use": "research use only",
    "license": "BSD-3-Clause",
}


class Opener:
    """Pickles to a call of open(path, 'w'): loading it unsafely would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def state():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    return {
        "conv.weight": torch.randn(2, 1, 3, 3, 3),
        "lin.weight": w.t(),  # not contiguous
        "tied.weight": w,  # shares memory with lin.weight
        "counter": torch.tensor(7, dtype=torch.int64),
        "half": torch.randn(5).to(torch.bfloat16),
    }


def test_round_trip_is_exact_and_card_is_complete(tmp_path):
    sd = state()
    written = save_weights(tmp_path / "model", sd, CARD)
    assert written == tmp_path / "model.safetensors" and written.is_file()
    loaded, card = load_weights(tmp_path / "model", expected_family="medgen.ssr")
    assert set(loaded) == set(sd)
    for key, value in sd.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value)
    for key, value in CARD.items():
        assert card[key] == value
    assert len(card["sha256"]) == 64 and card["format_version"] == 1 and card["created"][:2] == "20"
    # the same file is found whichever name the caller gives
    assert load_weights(tmp_path / "model.safetensors")[1] == card
    assert load_weights(tmp_path / "model.json")[1] == card


def test_a_model_restored_from_weights_gives_the_same_output(tmp_path):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))
    save_weights(tmp_path / "net", net.state_dict(), CARD)
    other = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))
    other.load_state_dict(load_weights(tmp_path / "net")[0])
    x = torch.randn(1, 1, 6, 6, 6)
    assert torch.equal(net(x), other(x))


def test_a_flipped_byte_is_caught(tmp_path):
    path = save_weights(tmp_path / "model", state(), CARD)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch: the file .* was modified or corrupted"):
        load_weights(tmp_path / "model")


@pytest.mark.parametrize("field, value", [("license", "MIT"), ("intended_use", "diagnosis"), ("sha256", "0" * 64)])
def test_an_edited_card_is_caught(tmp_path, field, value):
    save_weights(tmp_path / "model", state(), CARD)
    card_path = tmp_path / "model.json"
    card = json.loads(card_path.read_text())
    card[field] = value
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="edited|checksum mismatch"):
        load_weights(tmp_path / "model")


def test_missing_card_other_family_and_unknown_version_are_refused(tmp_path):
    save_weights(tmp_path / "model", state(), CARD)
    with pytest.raises(WeightsError, match="for family 'medgen.ssr', not 'medgen.vae'"):
        load_weights(tmp_path / "model", expected_family="medgen.vae")
    card_path = tmp_path / "model.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps(dict(card, format_version=99)))
    with pytest.raises(WeightsError, match="unknown format version 99"):
        load_weights(tmp_path / "model")
    card_path.unlink()
    with pytest.raises(WeightsError, match="model card model.json is missing"):
        load_weights(tmp_path / "model")
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nothing")
    with pytest.raises(WeightsError, match="family id"):
        save_weights(tmp_path / "x", state(), {"version": "1"})


def test_foreign_checkpoint_with_plain_tensors_loads(tmp_path):
    sd = {"a": torch.ones(2, 3), "b": torch.arange(4)}
    torch.save(sd, tmp_path / "plain.pt")
    loaded = load_foreign_checkpoint(tmp_path / "plain.pt")
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], sd["a"])
    # a training checkpoint that wraps the weights is unwrapped
    torch.save({"state_dict": sd, "epoch": 3, "lr": 0.1}, tmp_path / "wrapped.ckpt")
    assert torch.equal(load_foreign_checkpoint(tmp_path / "wrapped.ckpt")["b"], sd["b"])
    # load_weights never reads a pickle, even a harmless one
    with pytest.raises(WeightsError, match="load_foreign_checkpoint"):
        load_weights(tmp_path / "plain.pt")


def test_checkpoint_with_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"w": torch.ones(2), "payload": Opener(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="contains code or objects that are not plain tensors"):
        load_foreign_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(WeightsError, match="not found"):
        load_foreign_checkpoint(tmp_path / "missing.pt")


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "medgen"
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(target))
    assert cache_dir() == target and target.is_dir()
    monkeypatch.delenv("MEDGEN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "napari-medgen"
