"""The one map from what torch, diffusers and ONNX Runtime raise during a run to sdapi's GenerationFailed.

Both engines run their work inside `engine_errors`, so an out-of-memory reads the same whichever engine hit it, and
no vendor exception reaches the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from sdapi.core.params import GenerationParams
from sdapi.errors import GENERIC_GENERATION_FAILURE, ErrorCode, GenerationFailed, SdapiError

logger = logging.getLogger(__name__)

# How each runtime words running out of memory: torch's OutOfMemoryError ("CUDA out of memory", "DefaultCPUAllocator:
# can't allocate"), and ONNX Runtime's "Failed to allocate memory" from its arena.
_OUT_OF_MEMORY_WORDS = ("out of memory", "failed to allocate", "can't allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` means the device (GPU or CPU) ran out of memory."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return any(words in text for words in _OUT_OF_MEMORY_WORDS)


def out_of_memory_message(params: GenerationParams) -> str:
    """Names the size that ran out: the final one, when a second pass makes the images larger."""
    width, height = params.output_size
    second = "（高分辨率第二遍）" if params.hires is not None else ""
    return f"生成失败：显存/内存不足（{width}x{height}{second}，{params.num_images} 张）。请减小图片尺寸或张数后重试"


def _generic(_: Exception) -> str:
    return GENERIC_GENERATION_FAILURE


@contextmanager
def engine_errors(params: GenerationParams, describe: Callable[[Exception], str] = _generic) -> Iterator[None]:
    """Turn whatever the body raises into GenerationFailed: out of memory, or `describe(error)` (user-safe, no
    internals) with the traceback in the log. sdapi's own errors pass through unchanged."""
    try:
        yield
    except SdapiError:
        raise
    except Exception as error:
        if is_out_of_memory(error):
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()  # give the failed run's blocks back before the next task
            raise GenerationFailed(out_of_memory_message(params), ErrorCode.OUT_OF_MEMORY) from error
        logger.exception("generation failed")
        raise GenerationFailed(describe(error)) from error
