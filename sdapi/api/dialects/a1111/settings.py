"""The A1111 options a client may change through POST /sdapi/v1/options: live previews and the images' format. A1111
keeps one set of options per server; sdapi keeps one per API key (clients of one service do not change each
other's), in this API node's memory until it restarts: a client that sets them talks to the node it set them on, as
A1111's own clients talk to one server. Every other option stays read-only (set in config.yaml).

What each one does here, and where sdapi differs from A1111:
- live_previews_enable: whether this key's A1111 tasks draw live previews (GET /sdapi/v1/progress current_image).
- show_progress_every_n_steps: the previews' period in steps; -1 (A1111: only after each batch) and 0 draw none
  while sampling.
- show_progress_type: A1111's "Full", "Approx NN", "Approx cheap" and "TAESD" are all accepted and read back. sdapi
  draws every preview one way: the configured tiny decoder (previews.decoder, TAESD) where one is set, else its
  latent-to-RGB map, which is A1111's "Approx cheap" (so "TAESD" is exactly that when previews.decoder is set, and
  "Full" and "Approx NN", which sdapi does not run, get the nearest of the two).
- live_preview_content: "Prompt", "Negative prompt" and "Combined" are accepted; the preview is always the guided
  prediction, A1111's "Combined".
- live_previews_image_format: png, jpeg or webp, the format of /progress's current_image.
- samples_format: png, jpg (jpeg) or webp, the images' format when a request's override_settings does not say.
- CLIP_stop_at_last_layers: clip skip (1-12, A1111's numbering, the native clip_skip) for this key's tasks whose
  override_settings do not name one.
- sd_vae: the VAE of vae.dir this key's tasks run (by name or file name; "Automatic" and "None": the model's own)
  where their override_settings do not name one; a name that is not there fails the request with a 422 naming it.
- sd_vae_decode_method: "Full" (the model's VAE) or "TAESD" (its tiny decoder, the native vae_decoder: tiny; a model
  without one fails the request with a 422 naming vae_decoder) for this key's tasks whose override_settings do not
  name one. A1111's sd_vae_encode_method is not served: image-to-image always encodes with the model's VAE.
- token_merging_ratio: tomesd's ratio (0 to 0.75 here; A1111 allows 0.9) for this key's tasks, the native
  token_merging; 0: the config's default.
- send_seed, send_size: A1111's UI switches, stored and read back (clients toggle and restore them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from litestar import Request

from sdapi.api.auth import caller_of
from sdapi.api.dialects.common import config_of
from sdapi.errors import InvalidParameter

PREVIEW_TYPES = ("Full", "Approx NN", "Approx cheap", "TAESD")
PREVIEW_CONTENTS = ("Prompt", "Negative prompt", "Combined")
PREVIEW_FORMATS = ("png", "jpeg", "webp")
SAMPLES_FORMATS = ("png", "jpg", "jpeg", "webp")
# A1111's VAE decode methods, as the native vae_decoder.
VAE_DECODE_METHODS = {"Full": "full", "TAESD": "tiny"}
MAX_TOKEN_MERGING = 0.75  # tomesd's most with its 2x2 strides (sdapi.core.request's token_merging)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    raise InvalidParameter(name, f"{name} 必须是 true 或 false")


def _period(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or not -1 <= value <= 1000:
        raise InvalidParameter(name, f"{name} 必须是 -1 到 1000 的整数（-1 与 0：采样中不显示预览）")
    return int(value)


def _clip_skip(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or not 1 <= value <= 12:
        raise InvalidParameter(name, f"{name} 必须是 1 到 12 的整数（1：最后一层，2：倒数第二层）")
    return int(value)


def _vae_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParameter(name, f"{name} 必须是 VAE 名称（GET /sdapi/v1/sd-vae），或 Automatic / None")
    return value


def is_merging_ratio(value: object) -> bool:
    """Whether `value` is a token_merging_ratio sdapi runs (a number, not a boolean, 0 to MAX_TOKEN_MERGING)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_MERGING


def _ratio(name: str, value: Any) -> float:
    if not is_merging_ratio(value):
        raise InvalidParameter(name, f"{name} 必须是 0 到 {MAX_TOKEN_MERGING} 的数")
    return float(value)


def _choice(choices: tuple[str, ...]) -> Any:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise InvalidParameter(name, f"{name} 无效：{value!r}。可选：{', '.join(choices)}")
        return str(value)

    return check


# The writable options, each with its check.
WRITABLE = {
    "live_previews_enable": _flag,
    "show_progress_every_n_steps": _period,
    "show_progress_type": _choice(PREVIEW_TYPES),
    "live_preview_content": _choice(PREVIEW_CONTENTS),
    "live_previews_image_format": _choice(PREVIEW_FORMATS),
    "samples_format": _choice(SAMPLES_FORMATS),
    "CLIP_stop_at_last_layers": _clip_skip,
    "sd_vae": _vae_name,
    "sd_vae_decode_method": _choice(tuple(VAE_DECODE_METHODS)),
    "token_merging_ratio": _ratio,
    # A1111's UI switches (send the seed and the size to the other tabs): clients read, toggle and restore them;
    # they change nothing here.
    "send_seed": _flag,
    "send_size": _flag,
}


@dataclass
class ClientOptions:
    """One API key's writable options (A1111's defaults, the period from previews.every_steps)."""

    values: dict[str, Any] = field(default_factory=dict)

    def preview_every_steps(self) -> int:
        """The preview period this key's A1111 tasks ask for (0: none)."""
        if not self.values["live_previews_enable"]:
            return 0
        return max(int(self.values["show_progress_every_n_steps"]), 0)


class OptionsBook:
    """Every API key's writable options on this node."""

    def __init__(self, every_steps: int) -> None:
        self._defaults: dict[str, Any] = {
            "live_previews_enable": every_steps > 0,
            "show_progress_every_n_steps": every_steps,
            "show_progress_type": "Approx cheap",
            "live_preview_content": "Combined",
            "live_previews_image_format": "png",
            "samples_format": "png",
            "send_seed": True,
            "send_size": True,
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
            "sd_vae_decode_method": "Full",
            "token_merging_ratio": 0.0,
        }
        self._by_key: dict[str, ClientOptions] = {}

    def of(self, key_name: str) -> ClientOptions:
        found = self._by_key.get(key_name)
        if found is None:
            found = self._by_key[key_name] = ClientOptions(dict(self._defaults))
        return found

    def write(self, key_name: str, changes: dict[str, Any]) -> None:
        """Check every writable option in `changes` first, then write them all (or none)."""
        checked = {name: WRITABLE[name](name, value) for name, value in changes.items()}
        self.of(key_name).values.update(checked)


def options_of_caller(request: Request[Any, Any, Any]) -> ClientOptions:
    """The calling key's writable options on this node."""
    return _book(request).of(caller_of(request).name)


def write_caller_options(request: Request[Any, Any, Any], changes: dict[str, Any]) -> None:
    _book(request).write(caller_of(request).name, changes)


def _book(request: Request[Any, Any, Any]) -> OptionsBook:
    state = request.app.state
    book = state.get("a1111_options")
    if book is None:
        book = state["a1111_options"] = OptionsBook(config_of(request).previews.every_steps)
    return book
