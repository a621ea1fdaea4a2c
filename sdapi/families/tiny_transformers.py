"""Tiny, randomly initialised pipelines of the transformer families (SD 3.x, FLUX.1, FLUX.2 [klein], Z-Image):
their real classes at toy sizes, sized like diffusers' own test pipelines (one or two transformer blocks, widths of
32-64, two-layer T5 and Qwen3 text encoders), with a real VAE layout (8x downsampling, the family's latent
channels) so a 512-pixel picture takes a fraction of a second on a CPU. The tokenizers are built here, offline:
byte-level vocabularies with no merges (every byte a token), in each family's tokenizer class, the Qwen3 ones with
a chat template like Qwen3's, which the pipelines apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdapi.families.flux import FLUX
from sdapi.families.flux2_klein import FLUX2_KLEIN
from sdapi.families.sd3 import SD3
from sdapi.families.tiny_parts import TINY_MODEL_SEED, _bytes_to_unicode, _text_encoder_config
from sdapi.families.z_image import Z_IMAGE

# The variants built here (sdapi.families.TINY_VARIANTS names them all).
FLUX_DEV_VARIANT = "flux-dev"
FLUX_FILL_VARIANT = "flux-fill"  # FLUX.1 Fill: an inpainting checkpoint (the mask and masked image in view)
TRANSFORMER_VARIANTS = (SD3.name, FLUX.name, FLUX_DEV_VARIANT, FLUX_FILL_VARIANT, FLUX2_KLEIN.name, Z_IMAGE.name)
# Qwen3's chat template, cut to what the pipelines use: user turns, the generation prompt, and the empty thinking
# block Qwen3 writes when thinking is off.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# FLUX.2 [klein] reads its text encoder's hidden states at these depths (the pipeline's default): the tiny Qwen3
# has as many layers, each 16 wide, so the real default runs.
KLEIN_TEXT_LAYERS = 28


def _byte_tokens() -> list[str]:
    return list(_bytes_to_unicode().values())


def _byte_level(vocab: dict[str, int], unk: str | None = None) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def t5_tokenizer(directory: Path) -> Any:
    """A T5 tokenizer (T5TokenizerFast): <pad> 0, </s> 1 appended to every text, <unk> 2, then the bytes."""
    from tokenizers import processors
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = _byte_level({token: index for index, token in enumerate(specials + _byte_tokens())}, "<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    fast.model_max_length = 512
    fast.save_pretrained(str(directory))
    return T5TokenizerFast.from_pretrained(str(directory))


def qwen_tokenizer(directory: Path) -> Any:
    """A Qwen3 tokenizer (Qwen2TokenizerFast): the bytes, then <|endoftext|> (padding), <|im_start|>, <|im_end|>."""
    from transformers import Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = _byte_level({token: index for index, token in enumerate(_byte_tokens() + specials)})
    fast = Qwen2TokenizerFast(
        tokenizer_object=tokenizer, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    fast.chat_template = QWEN_CHAT_TEMPLATE
    fast.model_max_length = 512
    fast.save_pretrained(str(directory))
    return Qwen2TokenizerFast.from_pretrained(str(directory))


def _vae(latent_channels: int, vae_class: Any = None, **options: Any) -> Any:
    """The tiny VAE's 8x layout (as tiny.py's) with a family's latent channels."""
    from diffusers import AutoencoderKL

    return (vae_class or AutoencoderKL)(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=512,
        mid_block_add_attention=False,
        **options,
    )


def _flux_vae() -> Any:
    """FLUX.1's VAE layout (also Z-Image's): 16 channels, no quant convs, its scaling and shift."""
    return _vae(16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)


def _t5(width: int = 64) -> Any:
    from transformers import T5Config, T5EncoderModel

    vocab = 3 + 256
    config = T5Config(
        vocab_size=vocab,
        d_model=width,
        d_kv=8,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _qwen3(model_class: Any, layers: int, width: int) -> Any:
    from transformers import Qwen3Config

    config = Qwen3Config(
        vocab_size=256 + 3,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return model_class(config)


def _flow_scheduler(dynamic: bool, **options: Any) -> Any:
    """Flow-match Euler as the family's model pages ship it: a fixed shift of 3 (SD 3.x, Z-Image), or FLUX's
    resolution-dependent shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not dynamic:
        return FlowMatchEulerDiscreteScheduler(shift=3.0, **options)
    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        **options,
    )


def build_tiny_transformer_pipeline(variant: str, staging: Path, clip_tokenizer: Any) -> Any:
    """The tiny pipeline of a transformer family `variant` (TRANSFORMER_VARIANTS) with fixed random weights; its
    tokenizers are written under `staging` first."""
    import diffusers
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, Qwen3ForCausalLM, Qwen3Model

    torch.manual_seed(TINY_MODEL_SEED)
    if variant == SD3.name:
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # T5's width; the two CLIPs' 32 + 32 are padded to it
            caption_projection_dim=32,
            pooled_projection_dim=64,  # the two CLIPs' pooled outputs side by side
            out_channels=16,
            pos_embed_max_size=192,  # positions for sides up to 192 * 2 * 8 = 3072 pixels
        )
        vae = _vae(16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609)
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=_flow_scheduler(dynamic=False),
            vae=vae,
            text_encoder=CLIPTextModelWithProjection(_text_encoder_config("gelu")),
            tokenizer=clip_tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(_text_encoder_config("gelu")),
            tokenizer_2=clip_tokenizer,
            text_encoder_3=_t5(),
            tokenizer_3=t5_tokenizer(staging / "t5"),
        )
    if variant in (FLUX.name, FLUX_DEV_VARIANT, FLUX_FILL_VARIANT):
        fill = variant == FLUX_FILL_VARIANT
        transformer = diffusers.FluxTransformer2DModel(
            patch_size=1,
            # 16 latent channels packed 2x2; Fill adds the masked image's latents (64) and the mask's 8x8 pixels
            # per latent, packed (256).
            in_channels=64 + 64 + 256 if fill else 64,
            out_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=64,
            pooled_projection_dim=32,
            guidance_embeds=variant != FLUX.name,  # [dev] and Fill [dev] embed guidance; [schnell] does not
            axes_dims_rope=(4, 6, 6),
        )
        pipeline_class = diffusers.FluxFillPipeline if fill else diffusers.FluxPipeline
        return pipeline_class(
            transformer=transformer,
            scheduler=_flow_scheduler(dynamic=True),
            vae=_flux_vae(),
            text_encoder=CLIPTextModel(_text_encoder_config()),
            tokenizer=clip_tokenizer,
            text_encoder_2=_t5(),
            tokenizer_2=t5_tokenizer(staging / "t5"),
        )
    if variant == FLUX2_KLEIN.name:
        width = 16
        transformer = diffusers.Flux2Transformer2DModel(
            patch_size=1,
            in_channels=128,  # 32 latent channels packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * width,  # three of the text encoder's layers side by side
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),
            guidance_embeds=False,
        )
        return diffusers.Flux2KleinPipeline(
            transformer=transformer,
            scheduler=_flow_scheduler(dynamic=True, time_shift_type="exponential"),
            vae=_vae(32, diffusers.AutoencoderKLFlux2),
            text_encoder=_qwen3(Qwen3ForCausalLM, KLEIN_TEXT_LAYERS, width),
            tokenizer=qwen_tokenizer(staging / "qwen"),
            is_distilled=True,
        )
    if variant == Z_IMAGE.name:
        transformer = diffusers.ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=2,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
            cap_feat_dim=32,
            axes_dims=[8, 4, 4],
            axes_lens=[256, 128, 128],
        )
        return diffusers.ZImagePipeline(
            transformer=transformer,
            scheduler=_flow_scheduler(dynamic=False),
            vae=_flux_vae(),
            text_encoder=_qwen3(Qwen3Model, 2, 32),
            tokenizer=qwen_tokenizer(staging / "qwen"),
        )
    raise ValueError(f"not a transformer family variant: {variant!r}")
