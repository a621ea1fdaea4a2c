"""Putting a task's embeddings into a torch pipeline's text encoders, and its prompts in terms of them.

Each embedding file becomes a token of its own in the tokenizer(s), named by its content (`<ti-…>`), loaded with
diffusers' own load_textual_inversion (multi-vector files become token, token_1, …, as there). The prompt's
mentions of the embedding's name are rewritten to that token. Tokens stay loaded: a token no prompt names changes
nothing, so nothing has to be unloaded between tasks, and a changed file (another sha256) gets a new token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.core.params import GenerationParams
from sdapi.core.request import EmbeddingSpec
from sdapi.embeddings.files import EmbeddingFileError, read_embedding
from sdapi.embeddings.library import name_pattern
from sdapi.errors import InvalidParameter
from sdapi.families import family_of_pipeline

logger = logging.getLogger(__name__)

EmbeddingFiles = Callable[[EmbeddingSpec], Path]


def token_for(spec: EmbeddingSpec) -> str:
    """The tokenizer token of an embedding's content (no word a prompt would contain)."""
    return f"<ti-{spec.sha256[:16]}>"


class PipelineEmbeddings:
    """The embeddings loaded into one pipeline (and every pipeline sharing its text encoders and tokenizers)."""

    def __init__(self, pipeline: Any, files: EmbeddingFiles | None) -> None:
        self._pipeline = pipeline
        self._files = files
        self._loaded: set[str] = set()  # tokens

    def _encoders(self) -> dict[str, tuple[Any, Any]]:
        """The pipeline's text encoders with their tokenizers, by the pipeline's names, first first."""
        family = family_of_pipeline(self._pipeline).family
        pairs = zip(family.text_encoders, family.tokenizers, strict=True)
        return {
            encoder: (getattr(self._pipeline, encoder), getattr(self._pipeline, tokenizer))
            for encoder, tokenizer in pairs
        }

    def _load(self, spec: EmbeddingSpec) -> str:
        token = token_for(spec)
        if token in self._loaded:
            return token
        if self._files is None:
            raise InvalidParameter("prompt", "此引擎未配置嵌入（embeddings）")
        try:
            vectors = read_embedding(self._files(spec))
        except EmbeddingFileError as error:
            raise InvalidParameter("prompt", f"嵌入 {spec.name} 不可用：{error}") from None
        encoders = self._encoders()
        widths = tuple(int(encoder.get_input_embeddings().weight.shape[-1]) for encoder, _ in encoders.values())
        if set(vectors.parts) != set(encoders) or vectors.widths != widths:
            raise InvalidParameter(
                "prompt",
                f"嵌入 {spec.name} 不可用：为宽度 {list(vectors.widths)} 的文本编码器制作，"
                f"此模型的文本编码器宽度为 {list(widths)}",
            )
        with MODULES_BUILT_ONE_AT_A_TIME:  # resizing a token embedding builds a new one
            for part, (encoder, tokenizer) in encoders.items():
                self._pipeline.load_textual_inversion(
                    vectors.parts[part], token=token, text_encoder=encoder, tokenizer=tokenizer
                )
        self._loaded.add(token)
        logger.info("embedding %s loaded as %s (%d vectors)", spec.name, token, vectors.vectors)
        return token

    @contextmanager
    def applied(self, params: GenerationParams) -> Iterator[GenerationParams]:
        """The run's embeddings loaded, and its params with the prompts naming them by their tokens. Tokens stay
        loaded after the run on purpose: a token no prompt names changes nothing, so the next run sees the pipeline
        as if this one had never been."""
        yield self.apply(params)

    def apply(self, params: GenerationParams) -> GenerationParams:
        """`params` with each embedding's name in the prompts replaced by its loaded token."""
        if not params.embeddings:
            return params
        replacements = [(name_pattern(spec.name), self._load(spec)) for spec in params.embeddings]

        def rewrite(text: str | None) -> str | None:
            for pattern, token in replacements:  # the token has no backslash: safe as a replacement
                text = None if text is None else pattern.sub(token, text)
            return text

        hires = params.hires
        if hires is not None:
            hires = msgspec.structs.replace(
                hires, prompt=rewrite(hires.prompt), negative_prompt=rewrite(hires.negative_prompt)
            )
        prompt = rewrite(params.prompt)
        assert prompt is not None
        return msgspec.structs.replace(
            params, prompt=prompt, negative_prompt=rewrite(params.negative_prompt), hires=hires
        )
