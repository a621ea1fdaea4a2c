"""Prompts encoded as AUTOMATIC1111 encodes them, for the CLIP families (SD 1.x, 2.x, SDXL):

- the parsed pieces (sdapi.prompts.a1111_syntax) are tokenized one by one and laid into chunks of 75 tokens; a full
  chunk with a comma among its last 20 tokens breaks after that comma (A1111's comma_padding_backtrack), and BREAK
  ends a chunk early; each chunk is [BOS] + its tokens + [EOS], padded to 77;
- each chunk goes through the text encoder on its own (clip skip as diffusers counts it), its token embeddings are
  multiplied by their weights, and the chunk is rescaled so that its mean is what it was before (A1111's
  "Original" emphasis); the chunks are concatenated, so no token is cut at 77;
- a family with two text encoders (SDXL): both the same way, side by side; the pooled embedding is the pooling
  encoder's of the first chunk;
- the prompt and the negative prompt get as many chunks each: the shorter is extended with the empty prompt's;
- prompt editing and alternation (sdapi.prompts.schedules) give one set of embeddings per stretch of steps, all with
  as many chunks, which the run switches between (sdapi.engines.conditioning).

A prompt of at most 75 tokens without weights is what diffusers' own encoding gives, token for token: such prompts
keep the pipeline's encoding (`needs_weighting` says which need this one).

Why not compel: it reads its own syntax (`word++`, `(word)1.2`), not A1111's, and it weights by blending towards an
empty prompt rather than scaling and rescaling the embeddings, so its pictures are not A1111's for the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdapi.prompts.a1111_syntax import BREAK_MARK, parse, uses_syntax
from sdapi.prompts.schedules import prompt_schedule, text_at

CHUNK = 75
COMMA_BACKTRACK = 20


@dataclass
class _Chunk:
    tokens: list[int]
    weights: list[float]


def _ids(pipeline: Any, tokenizer: Any, text: str) -> list[int]:
    """`text`'s token ids without BOS/EOS (a multi-vector textual-inversion token expanded as the pipeline does)."""
    if hasattr(pipeline, "maybe_convert_prompt"):
        text = pipeline.maybe_convert_prompt(text, tokenizer)
    ids: list[int] = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    return ids


def chunks(pipeline: Any, tokenizer: Any, text: str) -> list[_Chunk]:
    """`text` parsed and laid into 77-token chunks with their weights, as A1111's tokenize_line lays them."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = _ids(pipeline, tokenizer, ",")[0]
    made: list[_Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, weights, last_comma
        filler = CHUNK - len(tokens)
        made.append(_Chunk([bos, *tokens, eos] + [pad] * filler, [1.0, *weights, 1.0] + [1.0] * filler))
        tokens, weights, last_comma = [], [], -1

    for piece, weight in parse(text):
        if (piece, weight) == BREAK_MARK:
            close_chunk()
            continue
        for token in _ids(pipeline, tokenizer, piece):
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK:
                close_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not made:
        close_chunk()
    return made


def needs_weighting(pipeline: Any, text: str | None) -> bool:
    """Whether `text` reads differently under A1111's syntax than as plain text: brackets, escapes or BREAK, or more
    tokens than one chunk holds."""
    if not text:
        return False
    return uses_syntax(text) or len(_ids(pipeline, pipeline.tokenizer, text)) > CHUNK


def run_needs_weighting(pipeline: Any, params: Any) -> bool:
    """Whether a run of `params` on `pipeline` encodes its prompts itself (A1111's syntax, on a family that reads it;
    the caller checks the family)."""
    if params.prompt_syntax != "a1111":
        return False
    return needs_weighting(pipeline, params.prompt) or needs_weighting(pipeline, params.negative_prompt)


def chunk_count(pipeline: Any, params: Any) -> int:
    """How many 77-token chunks a run of `params` encodes its prompts in (the longer of the two)."""
    texts = (params.prompt, params.negative_prompt or "")
    return max(len(chunks(pipeline, pipeline.tokenizer, text)) for text in texts)


def _encode_chunk(encoder: Any, chunk: _Chunk, clip_skip: int | None, penultimate: bool) -> tuple[Any, Any]:
    """One chunk through one text encoder: its weighted, rescaled token embeddings and its pooled output.
    `penultimate`: the family reads the layer before the last, as it is (else the last, after the final norm)."""
    ids = torch.tensor([chunk.tokens], device=encoder.device)
    deeper = penultimate or bool(clip_skip)  # a layer before the last: only a torch encoder gives those
    output = encoder(ids, output_hidden_states=True) if deeper else encoder(ids)
    if penultimate:
        hidden = output.hidden_states[-(clip_skip + 2) if clip_skip else -2]
    elif clip_skip:
        hidden = encoder.text_model.final_layer_norm(output.hidden_states[-(clip_skip + 1)])
    else:
        hidden = output[0]
    weights = torch.tensor(chunk.weights, device=hidden.device, dtype=hidden.dtype).reshape(1, -1, 1)
    original_mean = hidden.mean()
    weighted = hidden * weights
    weighted = weighted * (original_mean / weighted.mean())
    return weighted, output[0]


@dataclass(frozen=True)
class Encoded:
    """A prompt's embeddings (1, tokens, width), and SDXL's pooled embedding (1, width)."""

    embeds: Any
    pooled: Any = None


def encode(pipeline: Any, text: str, clip_skip: int | None, chunk_count: int | None = None) -> Encoded:
    """`text` encoded A1111's way by each of `pipeline`'s text encoders (its family names them, first first; their
    embeddings side by side), extended to `chunk_count` chunks with the empty prompt's when it has fewer."""
    from sdapi.families import family_of_pipeline  # the families import the engines' helpers; late to avoid a cycle

    family = family_of_pipeline(pipeline).family
    per_encoder = []
    pooled = None
    for tokenizer_name, encoder_name in zip(family.tokenizers, family.text_encoders, strict=True):
        tokenizer, encoder = getattr(pipeline, tokenizer_name), getattr(pipeline, encoder_name)
        laid = chunks(pipeline, tokenizer, text)
        if chunk_count is not None and len(laid) < chunk_count:
            empty = chunks(pipeline, tokenizer, "")[0]
            laid += [empty] * (chunk_count - len(laid))
        encoded = [_encode_chunk(encoder, chunk, clip_skip, family.penultimate_text_layer) for chunk in laid]
        per_encoder.append(torch.cat([embeds for embeds, _ in encoded], dim=1))
        if encoder_name == family.pooled_text_encoder:
            pooled = encoded[0][1]  # the first chunk's, as A1111 takes it
    return Encoded(torch.cat(per_encoder, dim=-1), pooled)


def prompt_embeddings(
    pipeline: Any, prompt: str, negative_prompt: str | None, clip_skip: int | None, chunk_count: int | None = None
) -> dict[str, Any]:
    """The pipeline call's embedding arguments for a prompt and a negative prompt of A1111's syntax, with as many
    chunks each (`chunk_count` at least). Clip skip applies to the prompt alone, as diffusers applies it (its
    negative prompt is read from the last layer). A pooled family without a negative prompt leaves it to the
    pipeline (zeros, as its config asks)."""
    with torch.inference_mode():
        count = max(len(chunks(pipeline, pipeline.tokenizer, text)) for text in (prompt, negative_prompt or ""))
        count = max(count, chunk_count or 0)
        positive = encode(pipeline, prompt, clip_skip, count)
        arguments: dict[str, Any] = {"prompt_embeds": positive.embeds}
        pooled = positive.pooled is not None
        if pooled:
            arguments["pooled_prompt_embeds"] = positive.pooled
        zeros = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", False))
        if negative_prompt or not pooled or not zeros:
            negative = encode(pipeline, negative_prompt or "", None, count)
            arguments["negative_prompt_embeds"] = negative.embeds
            if pooled:
                arguments["negative_pooled_prompt_embeds"] = negative.pooled
    return arguments


def scheduled_embeddings(
    pipeline: Any, prompt: str, negative_prompt: str | None, clip_skip: int | None, steps: int
) -> list[tuple[int, dict[str, Any]]]:
    """[(end_at_step, the pipeline call's embedding arguments)] for prompts with A1111's prompt editing or
    alternation (sdapi.prompts.schedules), every entry with as many chunks; one entry for prompts without."""
    positive = prompt_schedule(prompt, steps)
    negative = prompt_schedule(negative_prompt or "", steps)
    ends = sorted({end for end, _ in positive} | {end for end, _ in negative})
    pairs = [(end, positive[text_at(positive, end)][1], negative[text_at(negative, end)][1]) for end in ends]
    texts = [text for _, text, _ in pairs] + [text for _, _, text in pairs]
    count = max(len(chunks(pipeline, pipeline.tokenizer, text)) for text in texts)
    keep_empty_negative = negative_prompt if negative_prompt else None
    return [
        (end, prompt_embeddings(pipeline, text, negative_text or keep_empty_negative, clip_skip, count))
        for end, text, negative_text in pairs
    ]
