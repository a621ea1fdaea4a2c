"""Seamless tiling for one run: the convolutions of the UNet and the VAE pad circularly (wrapping around the opposite
edge) along the axes asked for, so the picture continues across its own edges and tiles without a seam (A1111's
`tiling`, and its per-axis extensions' x and y). Each convolution's forward is swapped for the run and restored
after it, whatever happens: nothing stays for a later run (a ControlNet attached for the run keeps its zero padding:
it only guides)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

AXES = {"xy": (True, True), "x": (True, False), "y": (False, True)}


def _padded_forward(conv: torch.nn.Conv2d, wrap_x: bool, wrap_y: bool) -> Any:
    pad_h, pad_w = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)

    def forward(input: torch.Tensor) -> torch.Tensor:
        padded = F.pad(input, (pad_w, pad_w, 0, 0), mode="circular" if wrap_x else "constant")
        padded = F.pad(padded, (0, 0, pad_h, pad_h), mode="circular" if wrap_y else "constant")
        return F.conv2d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


@contextlib.contextmanager
def tiling_applied(modules: Iterable[Any], axes: str | None) -> Iterator[None]:
    """While the block runs, every padded Conv2d of `modules` wraps around along `axes` ("xy", "x", "y"); None:
    nothing changes."""
    if axes is None:
        yield
        return
    wrap_x, wrap_y = AXES[axes]
    changed: list[torch.nn.Conv2d] = []
    try:
        for module in modules:
            for conv in module.modules():
                if isinstance(conv, torch.nn.Conv2d) and conv.padding not in ((0, 0), 0, "valid"):
                    conv.forward = _padded_forward(conv, wrap_x, wrap_y)
                    changed.append(conv)
        yield
    finally:
        for conv in changed:
            del conv.forward  # back to the class's own
