"""The ESRGAN-family upscaler files: both key layouts load into the same network, shapes read from the tensors."""

from __future__ import annotations

import pytest
import torch

from sdapi.upscalers.rrdb import UpscalerFileError, load_rrdb
from tests.support.upscaler_files import tiny_rrdb, write_rrdb


@pytest.mark.parametrize(
    "layout, suffix, scale",
    [  # the original ESRGAN repository has no pixel-unshuffle 2x models
        ("basicsr", ".pth", 4),
        ("esrgan", ".pth", 4),
        ("basicsr", ".safetensors", 4),
        ("basicsr", ".pth", 2),
        ("basicsr", ".safetensors", 2),
    ],
)
def test_every_layout_loads_the_same_network(tmp_path, layout, suffix, scale):
    network = tiny_rrdb(scale=scale, blocks=2, seed=scale)
    loaded = load_rrdb(write_rrdb(tmp_path / f"up{suffix}", network, layout))
    picture = torch.rand(1, 3, 16, 12)
    with torch.inference_mode():
        expected, got = network(picture), loaded(picture)
    assert loaded.scale == scale and got.shape == (1, 3, 16 * scale, 12 * scale)
    assert torch.equal(expected, got)


def test_what_is_not_an_rrdb_network_says_why(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    with pytest.raises(UpscalerFileError, match="无法读取"):
        load_rrdb(tmp_path / "bad.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UpscalerFileError, match="RRDBNet"):
        load_rrdb(tmp_path / "other.pth")
