"""Reading state dicts safely and telling which model they belong to."""

from __future__ import annotations

import pytest
import torch

from napari_persam.core.models.builders import build_tiny_sam
from napari_persam.core.models.errors import CheckpointError
from napari_persam.core.models.mobile_sam import build_mobile_sam
from napari_persam.core.models.state_dicts import (
    encoder_signature,
    read_state_dict,
    signature_of_model,
)
from tests._mobile_sam_reference import official_encoder_state

SMALL = {"embed_dims": (16, 32, 40, 48), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 3)}


def test_signatures_name_the_architecture_in_either_key_layout():
    assert signature_of_model(build_tiny_sam()) == "ViT, width 48, 2 blocks"
    assert signature_of_model(build_mobile_sam(**SMALL)) == "TinyViT, widths 16-32-40-48"
    official = {"image_encoder." + k: v for k, v in official_encoder_state(seed=0, **SMALL).items()}
    assert encoder_signature(official) == "TinyViT, widths 16-32-40-48"
    assert encoder_signature({"mask_decoder.x": torch.zeros(1)}) == ""


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_plain_and_training_checkpoints_are_read(tmp_path, wrapper):
    state = {"a.weight": torch.ones(2, 3)}
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, tmp_path / "c.pth")
    read = read_state_dict(tmp_path / "c.pth")
    assert list(read) == ["a.weight"] and torch.equal(read["a.weight"], torch.ones(2, 3))


def test_what_is_not_a_state_dict_of_tensors_is_refused(tmp_path):
    torch.save({"a": torch.ones(1), "b": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        read_state_dict(tmp_path / "mixed.pth")
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")
