"""The ESRGAN family's network (RRDBNet: ESRGAN, Real-ESRGAN x4plus/x2plus, most community "4x_…" models) and
reading its weights in both key layouts people ship: BasicSR's (`conv_first`, `body.N.rdbM.convK`, `conv_up1`…)
and the original ESRGAN repository's (`model.0`, `model.1.sub.N.RDBM.convK.0`…).

The shape of the network (width, blocks, growth, input/output channels, upsampling steps) is read from the
tensors, so any size loads. spandrel, which chaiNNer and ComfyUI use, reads these too, but it needs torchvision,
whose PyPI wheels link CUDA builds of torch and cannot load beside the CPU torch this project pins.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME

_OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")


class UpscalerFileError(ValueError):
    """The file is not an upscaler this service reads (the message reaches clients: Chinese first)."""


class _DenseBlock(nn.Module):  # type: ignore[misc]  # torch is untyped here
    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        for index in range(1, 5):
            setattr(self, f"conv{index}", nn.Conv2d(width + (index - 1) * growth, growth, 3, 1, 1))
        self.conv5 = nn.Conv2d(width + 4 * growth, width, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for index in range(1, 5):
            features.append(self.act(getattr(self, f"conv{index}")(torch.cat(features, 1))))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class _RRDB(nn.Module):  # type: ignore[misc]  # torch is untyped here
    def __init__(self, width: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(width, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):  # type: ignore[misc]  # torch is untyped here
    """BasicSR's RRDBNet: `unshuffle` folds the input (Real-ESRGAN x2plus: 2), `ups` nearest-neighbour doublings."""

    def __init__(self, in_channels: int, out_channels: int, width: int, blocks: int, growth: int, ups: int) -> None:
        super().__init__()
        self.unshuffle = {3: 1, 12: 2, 48: 4}.get(in_channels, 1) if out_channels == 3 else 1
        self.conv_first = nn.Conv2d(in_channels, width, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(width, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(width, width, 3, 1, 1)
        self.ups = ups
        for index in range(1, ups + 1):
            setattr(self, f"conv_up{index}", nn.Conv2d(width, width, 3, 1, 1))
        self.conv_hr = nn.Conv2d(width, width, 3, 1, 1)
        self.conv_last = nn.Conv2d(width, out_channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    @property
    def scale(self) -> float:
        return float(2**self.ups / self.unshuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = nn.functional.pixel_unshuffle(x, self.unshuffle)
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for index in range(1, self.ups + 1):
            upsampled = nn.functional.interpolate(features, scale_factor=2, mode="nearest")
            features = self.act(getattr(self, f"conv_up{index}")(upsampled))
        return self.conv_last(self.act(self.conv_hr(features)))


def _from_old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ESRGAN repository's names as BasicSR's: model.0 conv_first, model.1.sub.N the blocks (the last
    one conv_body), then per upsampling step a conv (model.3, model.6, …), conv_hr and conv_last."""
    blocks = 1 + max((int(match.group(1)) for key in state if (match := _OLD_BLOCK.match(key))), default=-1)
    renamed: dict[str, torch.Tensor] = {}
    convs = sorted(
        {int(key.split(".")[1]) for key in state if re.match(r"^model\.\d+\.weight$", key)} - {0}
    )  # model.0 and the plain convs after the body: up1, up2, …, hr, last
    names = [f"conv_up{index}" for index in range(1, len(convs) - 1)] + ["conv_hr", "conv_last"]
    for key, value in state.items():
        if match := _OLD_BLOCK.match(key):
            block, rdb, conv, kind = match.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{blocks}."):
            renamed["conv_body." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("model.0."):
            renamed["conv_first." + key.rsplit(".", 1)[1]] = value
        elif re.match(r"^model\.\d+\.(weight|bias)$", key):
            index = convs.index(int(key.split(".")[1]))
            renamed[f"{names[index]}.{key.rsplit('.', 1)[1]}"] = value
        else:
            raise UpscalerFileError(f"不认识的张量名：{key}")
    return renamed


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path))
        else:  # weights_only: a pickle may run code when loaded; tensors and dicts are all it needs
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise UpscalerFileError(f"无法读取文件（只读取张量，不执行其中代码）：{error}") from None
    if isinstance(state, dict):
        for wrapper in ("params_ema", "params", "state_dict"):  # Real-ESRGAN's and training scripts' wrappers
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UpscalerFileError("不是张量字典")
    return {str(key): value for key, value in state.items()}


def load_rrdb(path: Path) -> RRDBNet:
    """The network in an upscaler file, its shape read from its tensors; raise UpscalerFileError."""
    state = _read_state(path)
    if "model.0.weight" in state:
        state = _from_old_layout(state)
    if "conv_first.weight" not in state or "body.0.rdb1.conv1.weight" not in state:
        raise UpscalerFileError("不是 ESRGAN/RRDBNet 模型（缺少 conv_first 或 body.0.rdb1）")
    first, growth = state["conv_first.weight"], state["body.0.rdb1.conv1.weight"]
    blocks = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("body."))
    ups = sum(1 for key in state if re.match(r"^conv_up\d+\.weight$", key))
    with MODULES_BUILT_ONE_AT_A_TIME:
        network = RRDBNet(
            in_channels=int(first.shape[1]),
            out_channels=int(state["conv_last.weight"].shape[0]),
            width=int(first.shape[0]),
            blocks=blocks,
            growth=int(growth.shape[0]),
            ups=ups,
        )
    try:
        network.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except RuntimeError as error:
        raise UpscalerFileError(f"张量与 RRDBNet 结构不符：{str(error).splitlines()[0]}") from None
    network.eval()
    return network
