"""A1111's prompt syntax encoded on the engines (issue 47, item 1; sdapi.prompts): (word:1.0) is word, (word:1.5)
and [word] move the word's embedding in opposite directions and change the picture, a prompt past 75 tokens is
encoded in chunks (its tail counts), BREAK starts a chunk, SDXL's two encoders and pooled embedding, and prompts
that need none of it keep the pipeline's own encoding ("plain" cuts at 77 tokens, as before)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdapi.config import ModelConfig
from sdapi.core.batching import batch_key
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.prompts.weighted_encoding import _ids, chunks, prompt_embeddings
from tests.support.factories import make_params

FIELDS = {"width": 64, "height": 64, "num_inference_steps": 3, "seed": 5, "prompt_syntax": "a1111"}
# 80 filler tokens, then a tail that differs: the tail sits past CLIP's 77-token window.
HEAD = ", ".join(["a quiet valley"] * 20)


@pytest.fixture(scope="module")
def sd15(tiny_model):
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _picture(engine, prompt: str, **fields) -> np.ndarray:
    return np.asarray(engine.generate(Run(make_params(**{**FIELDS, **fields, "prompt": prompt}))).images[0])


def _word_norm(pipeline, prompt: str, word_position: int) -> float:
    """The norm of one token's embedding over the mean norm of the chunk's others (scale-free)."""
    embeds = prompt_embeddings(pipeline, prompt, None, None)["prompt_embeds"][0]
    norms = embeds.norm(dim=-1)
    others = torch.cat([norms[:word_position], norms[word_position + 1 :]])
    return float(norms[word_position] / others.mean())


def test_weights_equal_one_is_the_word_and_weights_move_it_both_ways(sd15):
    pipeline = sd15._text_to_image
    assert np.array_equal(_picture(sd15, "a red (ball:1.0)"), _picture(sd15, "a red ball"))
    plain = _picture(sd15, "a red ball")
    assert not np.array_equal(_picture(sd15, "a red (ball:1.5)"), plain)
    assert not np.array_equal(_picture(sd15, "a red [ball]"), plain)
    position = 1 + len(_ids(pipeline, pipeline.tokenizer, "a red "))  # after BOS: the word's first token
    assert (
        chunks(pipeline, pipeline.tokenizer, "a red ball")[0].tokens[position]
        == _ids(pipeline, pipeline.tokenizer, "ball")[0]
    )
    neutral = _word_norm(pipeline, "a red ball", position)
    assert _word_norm(pipeline, "a red (ball:1.5)", position) > neutral * 1.2
    assert _word_norm(pipeline, "a red [ball]", position) < neutral * 0.95


def test_a_long_prompts_tail_is_encoded_not_cut(sd15):
    pipeline = sd15._text_to_image
    assert len(pipeline.tokenizer(HEAD, add_special_tokens=False)["input_ids"]) > 77
    first, second = f"{HEAD}, a red ball", f"{HEAD}, snowy mountains at night"
    assert not np.array_equal(_picture(sd15, first), _picture(sd15, second))
    # Read as plain text the tails fall past the cut: the same picture.
    assert np.array_equal(_picture(sd15, first, prompt_syntax="plain"), _picture(sd15, second, prompt_syntax="plain"))
    embeds = prompt_embeddings(pipeline, first, "blurry", None)
    tokens = 77 * len(chunks(pipeline, pipeline.tokenizer, first))
    assert tokens >= 154 and embeds["prompt_embeds"].shape[1] == tokens
    assert embeds["negative_prompt_embeds"].shape[1] == tokens  # the short negative prompt padded alike


def test_break_starts_a_new_chunk(sd15):
    pipeline = sd15._text_to_image
    assert prompt_embeddings(pipeline, "a red ball BREAK a blue sky", None, None)["prompt_embeds"].shape[1] == 154
    assert prompt_embeddings(pipeline, "a red ball, a blue sky", None, None)["prompt_embeds"].shape[1] == 77
    laid = chunks(pipeline, pipeline.tokenizer, "a red ball BREAK a blue sky")
    assert [chunk.tokens[0] for chunk in laid] == [pipeline.tokenizer.bos_token_id] * 2


def test_a_full_chunk_breaks_after_its_last_comma(sd15):
    pipeline = sd15._text_to_image
    # 74 one-token words, a comma, then a last word: the chunk is full at 75 when that word comes, and its last comma
    # is within 20 tokens of its end, so what follows the comma moves to the next chunk.
    single = next(word for word in ("a", "the", "of", "i", "and") if len(_ids(pipeline, pipeline.tokenizer, word)) == 1)
    last = _ids(pipeline, pipeline.tokenizer, "z")
    text = " ".join([single] * 73) + ", " + single + " z"
    laid = chunks(pipeline, pipeline.tokenizer, text)
    assert len(laid) == 2 and all(len(chunk.tokens) == 77 for chunk in laid)
    comma = _ids(pipeline, pipeline.tokenizer, ",")[0]
    assert laid[0].tokens[74] == comma  # BOS, 73 words, the comma: the chunk ends after it
    assert laid[1].tokens[1 : 2 + len(last)] == [_ids(pipeline, pipeline.tokenizer, single)[0], *last]


def test_sdxl_encodes_both_encoders_and_pools_the_first_chunk(tiny_sdxl):
    engine = TorchEngine(ModelConfig(path=str(tiny_sdxl), device="cpu", dtype="float32"))
    engine.load()
    pipeline = engine._text_to_image
    prompt = f"{HEAD}, a (red:1.3) ball"
    embeds = prompt_embeddings(pipeline, prompt, None, None)
    width = pipeline.text_encoder.config.hidden_size + pipeline.text_encoder_2.config.hidden_size
    count = len(chunks(pipeline, pipeline.tokenizer, prompt))
    assert count >= 2 and embeds["prompt_embeds"].shape == (1, 77 * count, width)
    assert embeds["pooled_prompt_embeds"].shape[0] == 1
    assert "negative_prompt_embeds" not in embeds  # zeros, as the pipeline's config asks
    picture = _picture(engine, f"{HEAD}, a (red:1.3) ball")
    assert picture.shape == (64, 64, 3)
    # Prompt editing switches the pooled embedding too (SDXL's add_text_embeds).
    edited = _picture(engine, "a [red:blue:0.5] ball", num_inference_steps=4)
    assert not np.array_equal(edited, _picture(engine, "a red ball", num_inference_steps=4))


def test_weighted_prompts_run_outside_cross_request_batches():
    assert batch_key(make_params(**{**FIELDS, "prompt": "a (red) ball"})) is None
    assert batch_key(make_params(**{**FIELDS, "prompt": HEAD})) is None
    assert batch_key(make_params(**{**FIELDS, "prompt": "a red ball"})) is not None
    assert batch_key(make_params(**{**FIELDS, "prompt": "a (red) ball", "prompt_syntax": "plain"})) is not None


def test_an_onnx_export_takes_weights_in_one_chunk_and_leaves_longer_prompts_to_torch(
    plain_export, tiny_model, tmp_path
):
    from sdapi.config import OnnxConfig
    from sdapi.engines.onnx_engine import OnnxEngine
    from sdapi.errors import InvalidParameter

    engine = OnnxEngine(ModelConfig(path=str(tiny_model), onnx_path=str(plain_export)), OnnxConfig(), tmp_path)
    engine.load()
    weighted = _picture(engine, "a red (ball:1.5)")
    assert not np.array_equal(weighted, _picture(engine, "a red ball"))
    # (Not compared with torch's picture: the tiny model's text encoder ends in a layer norm without bias, so a
    # chunk's mean is about 1e-9 and A1111's rescale to it magnifies the engines' last-bit differences. A real
    # CLIP's mean is far from 0.)
    with pytest.raises(InvalidParameter) as refused:  # more than one chunk: the router sends it to torch
        engine.check(make_params(**{**FIELDS, "prompt": f"{HEAD}, a red ball"}))
    assert refused.value.field == "prompt"


def test_prompt_editing_switches_the_conditioning_halfway(sd15):
    """[red:blue:0.5] on 8 steps conditions steps 0-4 on "a red ball" and 5-7 on "a blue ball" (A1111 counts the
    switch step in the first stretch): the same picture as a hand-built run of diffusers' pipeline whose step
    callback puts in the blue embeddings after step 4; different from either prompt alone."""
    fields = {**FIELDS, "num_inference_steps": 8}
    edited = _picture(sd15, "a [red:blue:0.5] ball", **fields)
    red, blue = _picture(sd15, "a red ball", **fields), _picture(sd15, "a blue ball", **fields)
    assert not np.array_equal(edited, red) and not np.array_equal(edited, blue)
    pipeline = sd15._text_to_image
    from sdapi.engines.schedulers import make_scheduler

    params = make_params(**fields, prompt="a red ball")
    pipeline.scheduler = make_scheduler(params, sd15._scheduler_config)

    def encoded(text: str) -> torch.Tensor:
        ids = pipeline.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        return pipeline.text_encoder(ids)[0]

    negative = encoded("")
    switched = torch.cat([negative, encoded("a blue ball")])

    def reference_switch(pipe, step, timestep, callback_kwargs):
        if step == 4:  # after step 4: steps 5-7 take the blue prompt
            callback_kwargs["prompt_embeds"] = switched
        return callback_kwargs

    with torch.inference_mode():
        reference = pipeline(
            prompt_embeds=encoded("a red ball"),
            negative_prompt_embeds=negative,
            num_inference_steps=8,
            guidance_scale=params.guidance_scale,
            width=64,
            height=64,
            generator=[torch.Generator("cpu").manual_seed(params.seed)],
            callback_on_step_end=reference_switch,
            callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
        ).images[0]
    assert np.array_equal(edited, np.asarray(reference))


def test_alternation_differs_from_each_option(sd15):
    alternating = _picture(sd15, "a [red|blue] ball")
    assert not np.array_equal(alternating, _picture(sd15, "a red ball"))
    assert not np.array_equal(alternating, _picture(sd15, "a blue ball"))
