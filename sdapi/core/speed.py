"""Speed levers a run may pull (issue 48): a tiny decoder, a step cache, token merging. Each is a request field and
a config default (`defaults.*`); this module decides what a run gets: the request's word where it gives one,
refused with a 400 when the model cannot run it, else the default where the model can run it (a default the model
cannot run is left out, so one config serves every model). The engine applies them (sdapi.engines.speedups).

VAE tiling is a lever too, but it is decided by the picture's size (sdapi.core.params) and runs everywhere torch
does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdapi.core.request import GenerationRequest, StepCache
from sdapi.errors import InvalidParameter

if TYPE_CHECKING:
    from sdapi.config import DefaultsConfig

# What a mode takes, with its default: every other field of StepCache is refused for it.
STEP_CACHE_FIELDS: dict[str, dict[str, float]] = {
    "deepcache": {"interval": 3, "branch": 0},
    "first_block": {"threshold": 0.05},
    "taylorseer": {"interval": 5},
}


@dataclass(frozen=True)
class SpeedSupport:
    """Which levers a model can run (GET /api/v1/models shows it as `speed_options`)."""

    label: str = ""  # the family, for people: "SD 1.x"
    tiny_decoder: bool = True  # a tiny decoder was found for it (its own vae_tiny/, or vae.tiny_dir's)
    step_caches: tuple[str, ...] = tuple(STEP_CACHE_FIELDS)
    token_merging: bool = True
    # DeepCache's branches its UNet has (three per level), where its files say; None: not known before loading.
    deepcache_branches: int | None = None
    # Why none of them runs at all (an ONNX-only model); None: each as above.
    none_because: str | None = None

    def as_listing(self) -> dict[str, object]:
        """The levers as GET /api/v1/models lists them."""
        if self.none_because is not None:
            return {"vae_decoder": ["full"], "step_cache": [], "token_merging": False}
        decoders = ["full", "tiny"] if self.tiny_decoder else ["full"]
        return {"vae_decoder": decoders, "step_cache": list(self.step_caches), "token_merging": self.token_merging}

    @property
    def runs_tiny_decoder(self) -> bool:
        return self.tiny_decoder and self.none_because is None

    @property
    def runs_token_merging(self) -> bool:
        return self.token_merging and self.none_because is None

    def check(self, vae_decoder: str, step_cache: StepCache | None, token_merging: float) -> None:
        """Raise InvalidParameter for a lever this model cannot run (admission on a request's own values, the
        engine again on a task's, where the model's files are)."""
        if vae_decoder == "tiny" and not self.runs_tiny_decoder:
            raise self._refusal(
                "vae_decoder",
                "没有微型解码器：vae_decoder: tiny 需要模型目录中的 vae_tiny/ 或 vae.tiny_dir 中其家族的文件夹",
            )
        if step_cache is not None and step_cache.mode != "off":
            self._check_step_cache(step_cache)
        if token_merging > 0 and not self.runs_token_merging:
            raise self._refusal("token_merging", "不能使用 token_merging（tomesd 只作用于 UNet 的自注意力）")

    def _check_step_cache(self, cache: StepCache) -> None:
        modes = self.step_caches if self.none_because is None else ()
        if cache.mode not in modes:
            can = f"可用：{', '.join(modes)}" if modes else "不支持步间缓存"
            raise self._refusal("step_cache", f"不能使用 step_cache 模式 {cache.mode}（{can}）")
        branches = self.deepcache_branches
        if cache.mode == "deepcache" and branches is not None and (cache.branch or 0) >= branches:
            raise InvalidParameter(
                "step_cache", f"step_cache.branch 无效：{cache.branch}。此模型的 UNet 有 0 到 {branches - 1}"
            )

    def _refusal(self, field: str, why: str) -> InvalidParameter:
        return InvalidParameter(field, self.none_because or f"此模型（{self.label}）{why}")


EVERYTHING = SpeedSupport()


@dataclass(frozen=True)
class Levers:
    """The levers one run gets (GenerationParams' fields of the same names)."""

    vae_decoder: str
    step_cache: StepCache | None
    token_merging: float


def speed_levers(request: GenerationRequest, defaults: DefaultsConfig, support: SpeedSupport) -> Levers:
    """The levers a run gets; raise InvalidParameter for one the request names and the model cannot run."""
    own_vae = request.vae is not None
    if request.vae_decoder == "tiny" and own_vae:
        # The VAE it names decodes: the tiny decoder would replace exactly its decoding.
        raise InvalidParameter(
            "vae_decoder", "vae_decoder: tiny 与 vae 不能同用：所选 VAE 用于解码，微型解码器代替的正是它"
        )
    support.check(request.vae_decoder or "full", request.step_cache, request.token_merging or 0.0)
    return Levers(
        vae_decoder=_decoder(request.vae_decoder, defaults.vae_decoder, support, own_vae),
        step_cache=_step_cache(request.step_cache, defaults.step_cache, support),
        token_merging=_token_merging(request.token_merging, defaults.token_merging, support),
    )


def _decoder(asked: str | None, default: str, support: SpeedSupport, own_vae: bool) -> str:
    """The request's decoder, else the default where the model runs it (not beside a VAE the request names)."""
    if asked is not None:
        return asked
    return default if support.runs_tiny_decoder and not own_vae else "full"


def _step_cache(asked: StepCache | None, default: StepCache | None, support: SpeedSupport) -> StepCache | None:
    """The request's step cache (its mode's defaults filled in; "off": none), else the default where the model runs
    its mode."""
    if asked is not None:
        return None if asked.mode == "off" else filled(asked)
    modes = support.step_caches if support.none_because is None else ()
    if default is None or default.mode not in modes:
        return None
    return filled(default)


def filled(cache: StepCache) -> StepCache:
    """`cache` with its mode's defaults filled in; raise InvalidParameter for a field its mode does not take."""
    takes = STEP_CACHE_FIELDS[cache.mode]
    values: dict[str, float] = {}
    for name in ("interval", "branch", "threshold"):
        value = getattr(cache, name)
        if value is not None and name not in takes:
            raise InvalidParameter(
                "step_cache", f"step_cache 模式 {cache.mode} 不接受 {name}（接受：{', '.join(takes)}）"
            )
        if name in takes:
            values[name] = value if value is not None else takes[name]
    return StepCache(
        mode=cache.mode,
        interval=int(values["interval"]) if "interval" in values else None,
        branch=int(values["branch"]) if "branch" in values else None,
        threshold=float(values["threshold"]) if "threshold" in values else None,
    )


def _token_merging(asked: float | None, default: float, support: SpeedSupport) -> float:
    if asked is not None:
        return asked
    return default if support.runs_token_merging else 0.0
