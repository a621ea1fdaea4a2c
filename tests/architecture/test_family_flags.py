"""A model family is one module: outside sdapi/families/ no code names a family or tests a family flag (the way the
import contracts are tested). Read from the tokens, so prose in comments and docstrings ("SDXL LoRAs") is free,
and a wire name that merely contains a family (A1111's "ip-adapter_clip_sdxl") is not a family test."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Identifiers that would name a family or test for one.
FLAG_NAMES = ("sdxl", "is_xl", "text_encoder_2", "tokenizer_2", "text_encoder_3", "sd3", "flux", "klein", "z_image")
# String literals that are a family's name or one of its parts.
FLAG_STRINGS = {
    "sd",
    "sd1",
    "sd2",
    "sdxl",
    "sd3",
    "flux",
    "flux-dev",
    "flux2-klein",
    "z-image",
    "text_encoder_2",
    "tokenizer_2",
    "text_encoder_3",
    "tokenizer_3",
    "transformer",
}


def _is_flag(token: tokenize.TokenInfo) -> bool:
    if token.type == tokenize.NAME:
        return any(flag in token.string.lower() for flag in FLAG_NAMES)
    return token.type == tokenize.STRING and token.string.strip("\"'") in FLAG_STRINGS


# Config keys that name a family's part because users set them by that name (`models[].text_encoder_3`): allowed in
# the config module alone.
CONFIG_KEYS = {"text_encoder_3"}
CONFIG_MODULE = REPO_ROOT / "sdapi" / "config.py"


def _flags(path: Path) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    allowed = CONFIG_KEYS if path == CONFIG_MODULE else set()
    return [
        f"{path.relative_to(REPO_ROOT)}:{token.start[0]}: {token.string}"
        for token in tokens
        if _is_flag(token) and token.string.strip("\"'") not in allowed
    ]


def test_no_family_is_named_outside_the_families_package():
    families = REPO_ROOT / "sdapi" / "families"
    sources = [*(REPO_ROOT / "sdapi").rglob("*.py"), *(REPO_ROOT / "export").rglob("*.py")]
    found = [flag for path in sources if families not in path.parents for flag in _flags(path)]
    assert found == []


def test_the_check_sees_a_flag_in_code_and_not_in_prose(tmp_path, monkeypatch):
    sample = REPO_ROOT / "sdapi" / "families" / "__init__.py"  # any file under the root: only its text is read
    text = 'is_xl = model == "sdxl"  # SDXL\n"""sdxl in a docstring"""\nname = "ip-adapter_clip_sdxl"\n'
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)
    assert [line.split(": ", 1)[1] for line in _flags(sample)] == ["is_xl", '"sdxl"']
