"""Loaders on several threads of one process: accelerate's init_empty_weights (entered by diffusers, transformers and
the ONNX engine's shape reader) patches torch for the whole process, so without one lock a model loaded beside it
comes out with meta tensors, and the patch can outlive both (every later module empty). The CI run that found this
lost a whole test worker to it."""

from __future__ import annotations

import threading

import torch

from sdapi.engines.loading import load_pipeline
from sdapi.engines.onnx_engine import shapes_from_configs
from sdapi.families import family_named


def _meta_parameters(pipeline) -> list[str]:
    return [
        f"{part}.{name}"
        for part, module in pipeline.components.items()
        if isinstance(module, torch.nn.Module)
        for name, parameter in module.named_parameters()
        if parameter.is_meta
    ]


def test_a_model_loaded_while_another_thread_reads_shapes_on_the_meta_device_is_whole(tiny_model):
    family = family_named("sd1")
    stop = threading.Event()
    reads = 0

    def read_shapes_until_stopped() -> None:
        nonlocal reads
        while not stop.is_set():
            shapes_from_configs(tiny_model, family)
            reads += 1

    reader = threading.Thread(target=read_shapes_until_stopped)
    reader.start()
    try:
        pipelines = [load_pipeline(str(tiny_model), torch.float32) for _ in range(3)]
    finally:
        stop.set()
        reader.join(timeout=120)
    assert not reader.is_alive()
    assert reads > 0  # the two really overlapped
    for pipeline in pipelines:
        assert _meta_parameters(pipeline) == []
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # no patch left behind
