"""Running a neural upscaler on a picture: the networks loaded on demand, a few kept (least recently used out)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdapi.upscalers.rrdb import RRDBNet, load_rrdb

KEPT = 2


class NeuralUpscalers:
    """`upscale(name, image)`: the picture upscaled by the network's own factor, on `device`."""

    def __init__(self, path_for: Callable[[str], Path], device: str) -> None:
        self._path_for = path_for
        self._device = device
        self._loaded: OrderedDict[Path, RRDBNet] = OrderedDict()
        self._lock = threading.Lock()

    def _network(self, name: str) -> RRDBNet:
        path = self._path_for(name)
        with self._lock:
            if path in self._loaded:
                self._loaded.move_to_end(path)
                return self._loaded[path]
        network = load_rrdb(path)
        network.to(self._device)
        with self._lock:
            self._loaded[path] = network
            while len(self._loaded) > KEPT:
                self._loaded.popitem(last=False)
        return network

    def upscale(self, name: str, image: Image.Image) -> Image.Image:
        network = self._network(name)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).to(self._device)
        with torch.inference_mode():
            output = network(tensor).clamp(0, 1)
        array = (output[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(array, "RGB")
