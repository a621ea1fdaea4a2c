"""Pure helpers: 422 descriptions, init image decoding, key comparison, dtype choice, batching, error table."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import msgspec
import pytest
import torch
from PIL import Image

from sdapi.api.auth import find_caller
from sdapi.api.errors import status_for
from sdapi.api.validation import describe
from sdapi.core.callers import Caller
from sdapi.core.params import GenerationRequest
from sdapi.engines.devices import choose_dtype, cpu_has_native_bf16
from sdapi.engines.pipeline_runs import chunk
from sdapi.errors import GenerationFailed, InvalidParameter, QueueFull, RequestValidationFailed, TaskNotFound
from sdapi.media.images import decode_init_image, encode_image


def _describe(raw):
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as raised:
        msgspec.json.decode(raw, type=GenerationRequest)
    return describe(raised.value)


def test_describe_maps_msgspec_errors_to_the_seed_shape():
    assert _describe(b"{}") == {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
    assert _describe(b'{"prompt":"a","seed":-2}')["type"] == "value_error.number.not_ge"
    assert _describe(b'{"prompt":"a","x":1}')["loc"] == ["body", "x"]
    assert _describe(b"{")["type"] == "value_error.jsondecode"


def _png(width, height, image_format="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("prefix", "image_format", "expected"),
    [
        ("data:image/png;base64,", "PNG", "png"),
        ("data:image/jpeg;base64,", "JPEG", "jpeg"),
        ("data:image/jpg;base64,", "JPEG", "jpeg"),
        ("DATA:IMAGE/PNG;BASE64,", "PNG", "png"),
    ],
)
def test_decode_init_image_accepts_png_and_jpeg(prefix, image_format, expected):
    raw = _png(70, 90, image_format)
    decoded, info = decode_init_image(prefix + base64.b64encode(raw).decode(), max_pixels=10_000)
    assert decoded == raw and (info.width, info.height, info.format) == (70, 90, expected)


def test_decode_init_image_enforces_the_pixel_limit():
    with pytest.raises(InvalidParameter):
        decode_init_image("data:image/png;base64," + base64.b64encode(_png(101, 100)).decode(), max_pixels=10_000)


@pytest.mark.parametrize("output_format", ["png", "jpg", "jpeg"])
def test_encode_image(output_format):
    data = encode_image(Image.new("RGB", (16, 8)), output_format)
    assert Image.open(io.BytesIO(data)).format == ("PNG" if output_format == "png" else "JPEG")


def test_key_comparison_finds_the_caller_of_a_key():
    a, b = Caller(name="a"), Caller(name="b", admin=True)
    assert find_caller("b", {"a": a, "b": b}) is b
    assert find_caller("", {"a": a}) is None and find_caller("ab", {"a": a, "b": b}) is None
    assert find_caller("a", {}) is None
    assert find_caller("ключ", {"ключ": a}) is a


def test_auto_dtype(tmp_path: Path):
    assert choose_dtype("auto", "cuda") == torch.float16
    assert choose_dtype("auto", "cpu", native_bf16=True) == torch.bfloat16
    assert choose_dtype("auto", "cpu", native_bf16=False) == torch.float32
    assert choose_dtype("float32", "cuda") == torch.float32
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_has_native_bf16(cpuinfo)
    # AVX-512 BF16 without AMX measured slower than fp32: auto stays fp32 there.
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert not cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_chunk():
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk([7], 4) == [[7]]


def test_error_table():
    assert status_for(InvalidParameter("f", "m")) == 400
    assert status_for(TaskNotFound("m")) == 404
    assert status_for(RequestValidationFailed([])) == 422
    assert status_for(QueueFull("m", 1)) == 429
    assert status_for(GenerationFailed("m")) == 500


def test_model_sources_are_told_apart(tmp_path):
    from sdapi.core.model_sources import describe_source

    (tmp_path / "folder").mkdir()
    assert describe_source(str(tmp_path / "folder")) == "folder"
    assert describe_source(str(tmp_path / "model.safetensors")) == "single-file"
    assert describe_source(str(tmp_path / "model.CKPT")) == "single-file"
    assert describe_source("runwayml/stable-diffusion-v1-5") == "hub"


@pytest.mark.parametrize("family", ["sd15", "sd2-v", "sdxl"])
def test_lora_targets_read_from_disk_are_those_of_the_loaded_model(tmp_path, family):
    """An API node decides LoRA fits from the model's files; a worker from the loaded modules: the same names and
    shapes for every family."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdapi.devtools.tiny_model import make_tiny_model
    from sdapi.loras.merging import adapter_targets, target_shapes
    from sdapi.loras.targets import disk_targets

    folder = make_tiny_model(tmp_path / family, family=family)
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline = pipeline_class.from_pretrained(folder)
    loaded = target_shapes(
        adapter_targets(pipeline.unet, pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None))
    )
    assert disk_targets(folder) == loaded
