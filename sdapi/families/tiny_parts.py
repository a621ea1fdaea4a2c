"""What every tiny model shares (tiny.py's UNet families and tiny_transformers.py's transformer families): the fixed
seed, CLIP's byte table (every byte a token of the tiny vocabularies) and the tiny CLIP text encoder's config."""

from __future__ import annotations

from typing import Any

# A fixed seed makes the weights identical on every build, so tests and benchmarks are repeatable.
TINY_MODEL_SEED = 20240101


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def tiny_vocab_size() -> int:
    """Size of the tiny tokenizer's vocabulary (two tokens per byte plus two special tokens)."""
    return 2 * 256 + 2


def _text_encoder_config(hidden_act: str = "quick_gelu", vocab_size: int | None = None, width: int = 32) -> Any:
    """A 2-layer CLIP text encoder `width` wide; the special tokens are the vocabulary's last two ids (the
    end-of-text token highest, where CLIP pools)."""
    from transformers import CLIPTextConfig

    vocab_size = tiny_vocab_size() if vocab_size is None else vocab_size
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=width,
        hidden_act=hidden_act,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
