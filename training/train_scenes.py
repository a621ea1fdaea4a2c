"""Train the embedded default model on procedurally drawn scenes (training.scenes), on CPU.

    python -m training.train_scenes --workdir data/train-scenes --out data/models/scenes-sd

Stages, each kept in --workdir when done (the UNet's also every 500 steps), so an interrupted run resumes where
it stopped: run the same command again.

1. render: the training scenes at 256x256 and 512x512, with their labels;
2. vae: an AutoencoderKL (8x downsampling, 4 latent channels) on whole scenes at 128 and 256 pixels;
3. encode: every scene's latent distribution, once, with the trained encoder;
   decoder: the VAE's decoder tuned again, each picture's error scaled by its contrast (night scenes count as
   much as day ones); the encoder, and so the latents the UNet learns, stay as they are;
4. text: a small CLIP text encoder alone, taught to read a caption's scene back from it (a word-level tokenizer
   with character fallback, training.word_tokenizer);
5. unet: the UNet on the latents and the frozen text encoder's states of their captions, at 256 and 512, 10 % of
   captions dropped so classifier-free guidance works, an exponential moving average kept;
6. export: the pipeline in diffusers format, fp16 safetensors, SD 1.5's scheduler config;
7. lora: a "monochrome" style LoRA (kohya layout, trigger word "monochrome") on the frozen model;
8. embedding: a textual-inversion embedding "<sdapi-orange-ball>" (the orange circle, a colour no caption names);
9. manifest: sha256 of every shipped file, the command, the scene renderer's version, the loss curve.

Everything is seeded: the same command on the same torch build and CPU gives the same weights (a resumed run is
equivalent, not bit-identical: its caption draws restart from the step it resumed at).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from sdapi.models.default_model import manifest_of, sha256_of
from training import scenes

SEED = 20261201
TRIGGER = "monochrome"
EMBEDDING_TOKEN = "<sdapi-orange-ball>"
LORA_NAME = "monochrome"
EMBEDDING_NAME = "sdapi-orange-ball"
LORA_RANK = 4
LORA_LR = 2e-3
LORA_BATCH = 6
EMBEDDING_BATCH = 6
EMBEDDING_TEMPLATES = ("a {}", "{}", "a {} on a black background", "a simple {}, 4k")
OFFSET_NOISE = 0.1
HIGH_NOISE_SNR = 0.1  # below this signal-to-noise ratio (t >= 687 of 1000) a step's loss weighs more...
HIGH_NOISE_MOST = 20.0  # ...up to this many times
# Pictures per VAE encoder call. Small batches: the encoder is memory-bound on CPU, and 4 pictures a call encode
# 2.4x (256²) to 4x (512²) faster than 64, with bit-identical latents (every layer treats each picture on its own).
ENCODE_BATCH = 4
# The odds a VAE training picture is swapped for an object scene (15 % of scenes are; with this, 36 % of pictures).
# A shape's colour is the one colour in the scenes that nothing around it predicts: trained on the scenes as drawn,
# the VAE encoded a shape's luminance only (the latents of a red, a green and a blue circle on black were alike)
# and decoded every shape in one colour, so neither "a red circle" nor the embedding's orange could be drawn.
VAE_MORE_OBJECTS = 0.25


@dataclass
class Budget:
    """How much each stage does; `--quick` shrinks all of it to a smoke test of the whole script."""

    scenes_256: int = 6000
    scenes_512: int = 1600
    vae_steps: int = 2000
    decoder_steps: int = 400
    text_steps: int = 800
    unet_steps: int = 6000
    lora_steps: int = 350
    embedding_steps: int = 200
    batch_256: int = 32
    batch_512: int = 8
    every_512: int = 5  # one 512 batch after every four 256 batches...
    only_512_last: int = 2400  # ...and in the last steps of the UNet stage 512 batches only

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            scenes_256=64,
            scenes_512=8,
            vae_steps=10,
            decoder_steps=4,
            text_steps=6,
            unet_steps=12,
            lora_steps=4,
            embedding_steps=4,
            batch_256=8,
            batch_512=2,
            only_512_last=4,
        )


def _log(message: str) -> None:
    print(f"[train-scenes {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _progress(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, file=sys.stderr, mininterval=5.0, dynamic_ncols=False, ncols=100)


# ---------------------------------------------------------------------------------------------------- 1. render


def _render_range(arguments: tuple[int, int, int]) -> tuple[np.ndarray, list[dict[str, object]]]:
    start, count, size = arguments
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = []
    for index in range(count):
        seed = SEED + size * 1_000_003 + start + index
        scene = scenes.random_scene(random.Random(seed))
        images[index] = np.asarray(scenes.render(scene, size, seed))
        labels.append(scenes.labels(scene))
    return images, labels


def render_stage(workdir: Path, budget: Budget) -> None:
    from multiprocessing import Pool

    for size, count in ((256, budget.scenes_256), (512, budget.scenes_512)):
        target = workdir / f"scenes_{size}.npz"
        if target.exists():
            continue
        _log(f"rendering {count} scenes at {size}x{size}")
        chunks = [(start, min(200, count - start), size) for start in range(0, count, 200)]
        with Pool(max(1, min(2, os.cpu_count() or 1))) as pool:
            parts = pool.map(_render_range, chunks)
        images = np.concatenate([part[0] for part in parts])
        labels = [label for part in parts for label in part[1]]
        np.savez(target.with_suffix(".tmp.npz"), images=images, labels=json.dumps(labels))
        target.with_suffix(".tmp.npz").rename(target)


def _load_labels(workdir: Path, size: int) -> list[dict[str, Any]]:
    """The scenes' labels alone (an .npz reads each array on access: the images stay on disk)."""
    return list(json.loads(str(np.load(workdir / f"scenes_{size}.npz")["labels"])))


def _load_images(workdir: Path, size: int) -> np.ndarray:
    images: np.ndarray = np.load(workdir / f"scenes_{size}.npz")["images"]
    return images


def scene_of(label: dict[str, Any]) -> scenes.Scene:
    fields = {key: value for key, value in label.items() if key != "kind"}
    return scenes.Landscape(**fields) if label["kind"] == "landscape" else scenes.ShapeScene(**fields)


# ---------------------------------------------------------------------------------------------------- 2. vae


def _to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _encode_means(vae: Any, images: np.ndarray) -> Any:
    """The VAE encoder's means for uint8 pictures, `ENCODE_BATCH` at a time."""
    import torch

    return torch.cat(
        [
            vae.encode(_to_tensor(images[start : start + ENCODE_BATCH])).latent_dist.mean
            for start in range(0, len(images), ENCODE_BATCH)
        ]
    )


def _vae() -> Any:
    """The random tiny model's VAE with more channels at the two lowest resolutions, where the cost is small (the
    16-channel bottleneck of the random one blurs the scenes' edges), and GroupNorm in 2 groups instead of 8.

    With 8 groups the 8-channel full-resolution layers normalised each channel alone, which erases its mean over
    the picture: a picture's colours were known only up to a shift and scale per channel, and the VAE guessed them
    from the shapes. The ninth round's VAE drew a sunlit meadow (70, 145, 55) back as (78, 109, 56), and
    bench-adherence's scorer read the water right in 88 % of 80 held-out scenes after a round trip; its generated
    pictures failed on the same prompts, lakes on grass read as the sea. With 2 groups the same stage ends at
    0.21 against 0.36, the meadow comes back as (73, 146, 56) and water is right in 100 % (docs/benchmarks.md, the
    tenth round)."""
    from sdapi.families.tiny import _tiny_vae

    return _tiny_vae(block_out_channels=(8, 16, 32, 32), norm_num_groups=2)


def vae_stage(workdir: Path, budget: Budget, curve: dict[str, list[float]]) -> None:
    import torch

    target = workdir / "vae"
    if (target / "config.json").exists():
        return
    torch.manual_seed(SEED)
    vae = _vae()
    images_256 = _load_images(workdir, 256)
    objects = np.array([i for i, label in enumerate(_load_labels(workdir, 256)) if label["kind"] == "object"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=budget.vae_steps, pct_start=0.05)
    rng = np.random.default_rng(SEED)
    losses = []

    def picks(count: int) -> np.ndarray:
        """`count` random scenes, each swapped for an object scene with odds VAE_MORE_OBJECTS."""
        chosen = rng.integers(0, len(images_256), count)
        swapped = rng.random(count) < VAE_MORE_OBJECTS
        return np.where(swapped, rng.choice(objects, count), chosen) if len(objects) else chosen

    with _progress(budget.vae_steps, "vae") as bar:
        for step in range(budget.vae_steps):
            # Whole pictures, never crops: GroupNorm's statistics of a crop are not those of the picture the
            # service decodes (a VAE trained on 96-pixel crops reconstructed whole 256-pixel scenes 4x worse).
            # Every other step the 256 renders at half size, twelve at a time; else four at full size.
            if step % 2 == 0:
                batch = torch.nn.functional.interpolate(
                    _to_tensor(images_256[picks(12)]), size=(128, 128), mode="bilinear", antialias=True
                )
            else:
                batch = _to_tensor(images_256[picks(4)])
            if rng.random() < 0.5:
                batch = batch.flip(3)
            posterior = vae.encode(batch).latent_dist
            decoded = vae.decode(posterior.sample()).sample
            reconstruction = _reconstruction_loss(decoded, batch)
            kl = posterior.kl().mean() / (batch.shape[2] * batch.shape[3])
            loss = reconstruction + 1e-4 * kl
            _optimizer_step(loss, optimizer, vae.parameters(), schedule)
            losses.append(float(reconstruction))
            bar.update(1)
            bar.set_postfix(l1=f"{np.mean(losses[-50:]):.4f}")
    curve["vae_reconstruction"] = _thin(losses)
    _save_folder(vae, target)


def _reconstruction_loss(decoded: Any, batch: Any) -> Any:
    """The VAE's loss on its reconstruction of `batch`: L1 + ½ MSE of each picture's pixel error divided by the
    picture's contrast (its standard deviation) + 0.05, about 2x for a day scene, 4x for a night scene. Unscaled,
    the errors of dark, low-contrast scenes hardly count and the VAE drops what tells them apart (see
    decoder_stage)."""
    error = (decoded - batch) / (batch.std(dim=(1, 2, 3), keepdim=True) + 0.05)
    return error.abs().mean() + 0.5 * (error**2).mean()


def _save_folder(model: Any, target: Path) -> None:
    """save_pretrained into `target` through a temporary folder: a stage is done only once its folder exists."""
    staging = target.with_name(target.name + ".tmp")
    model.save_pretrained(str(staging))
    staging.rename(target)


def _optimizer_step(loss: Any, optimizer: Any, parameters: Any, lr_schedule: Any | None = None) -> None:
    """One update, as every stage makes it: gradients of `loss`, clipped to norm 1, then the step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    if lr_schedule is not None:
        lr_schedule.step()


def _thin(values: list[float], points: int = 40) -> list[float]:
    """A loss curve as `points` averages of equal stretches (for the manifest and docs/benchmarks.md)."""
    if not values:
        return []
    edges = np.linspace(0, len(values), min(points, len(values)) + 1).astype(int)
    return [round(float(np.mean(values[a:b])), 5) for a, b in pairwise(edges) if b > a]


# ---------------------------------------------------------------------------------------------------- 3. encode


def encode_stage(workdir: Path) -> None:
    import torch
    from diffusers import AutoencoderKL

    target = workdir / "latents.pt"
    if target.exists():
        return
    vae = AutoencoderKL.from_pretrained(str(workdir / "vae")).eval()
    encoded: dict[str, Any] = {}
    with torch.no_grad():
        for size in (256, 512):
            images = _load_images(workdir, size)
            means, logvars = [], []
            for start in range(0, len(images), ENCODE_BATCH):
                batch = _to_tensor(images[start : start + ENCODE_BATCH])
                # Each scene as drawn and mirrored: index [scene, flip] of the stored tensors.
                dists = [vae.encode(part).latent_dist for part in (batch, batch.flip(3))]
                means.append(torch.stack([dist.mean.half() for dist in dists], 1))
                logvars.append(torch.stack([dist.logvar.half() for dist in dists], 1))
            encoded[str(size)] = (torch.cat(means), torch.cat(logvars))
        std = float(encoded["256"][0].float().std())
    encoded["scaling_factor"] = 1.0 / std
    _log(f"latent std {std:.4f}: scaling factor {1.0 / std:.4f}")
    torch.save(encoded, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").rename(target)


def decoder_stage(workdir: Path, budget: Budget, curve: dict[str, list[float]]) -> None:
    """The VAE's decoder (and the convolution before it) tuned again on the same contrast-scaled loss, with the
    encoder frozen: the latent space the UNet is trained in is the one the encode stage wrote.

    Trained on plain L1 + MSE, the VAE all but dropped what told night scenes apart (version 1 of the scenes drew
    their water, ground and mountains 10-40 levels of 255 apart): its reconstructions of rendered night scenes,
    scored by bench-adherence's scorer, kept the ground in 55 % and the water in 50 % (the renders themselves: 100 %
    and 86 %). This stage, then 800 steps on a VAE trained unscaled, brought them to 77 % and 73 %. The VAE stage
    now scales its loss from the start; these steps polish the decoder once the encoder is fixed.
    """
    import torch
    from diffusers import AutoencoderKL

    target = workdir / "vae_decoder"
    if (target / "config.json").exists():
        return
    torch.manual_seed(SEED + 7)
    vae = AutoencoderKL.from_pretrained(str(workdir / "vae"))
    vae.requires_grad_(False)
    tuned = [vae.decoder, vae.post_quant_conv]
    parameters = [p for module in tuned for p in module.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-3, total_steps=budget.decoder_steps, pct_start=0.05
    )
    images_256 = _load_images(workdir, 256)
    rng = np.random.default_rng(SEED + 7)
    losses = []
    with _progress(budget.decoder_steps, "decoder") as bar:
        for _ in range(budget.decoder_steps):
            batch = _to_tensor(images_256[rng.integers(0, len(images_256), 6)])
            with torch.no_grad():
                latents = vae.encode(batch).latent_dist.sample()
            loss = _reconstruction_loss(vae.decode(latents).sample, batch)
            _optimizer_step(loss, optimizer, parameters, schedule)
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    curve["decoder_loss"] = _thin(losses)
    _save_folder(vae, target)


# ---------------------------------------------------------------------------------------------------- 4. text

# What the text encoder is taught to tell apart: each attribute of a scene, the kind of scene, and the style
# trigger. A landscape's attributes are no question for an object scene and the reverse (their loss is masked).
_TEXT_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kind": ("any", ("landscape", "object")),
    "time": ("landscape", scenes.TIMES),
    "mountains": ("landscape", scenes.MOUNTAINS),
    "water": ("landscape", scenes.WATERS),
    "ground": ("landscape", scenes.GROUNDS),
    "trees": ("landscape", scenes.TREES),
    "clouds": ("landscape", ("False", "True")),
    "colour": ("object", tuple(scenes.COLOURS)),
    "shape": ("object", scenes.SHAPES),
    "background": ("object", tuple(scenes.BACKGROUNDS)),
    "style": ("any", ("plain", TRIGGER)),
}
TEXT_DROPOUT = 0.1  # the share of empty captions, as in the UNet's training


def _text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextModel

    from sdapi.families.tiny_parts import _text_encoder_config

    return CLIPTextModel(_text_encoder_config("quick_gelu", vocab_size=vocab_size, width=64))


def _tokenizer(directory: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"), model_max_length=77
    )


def _tokens(tokenizer: Any, texts: list[str]) -> Any:
    return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _text_examples(rng: random.Random, count: int) -> tuple[list[str], dict[str, list[int]]]:
    """`count` random scenes' captions and their classes per target (-100: not asked of that scene)."""
    texts: list[str] = []
    classes: dict[str, list[int]] = {name: [] for name in _TEXT_TARGETS}
    for _ in range(count):
        scene = scenes.random_scene(rng)
        label = {key: str(value) for key, value in scenes.labels(scene).items()}
        text = "" if rng.random() < TEXT_DROPOUT else scenes.caption(scene, rng)
        label["style"] = "plain"
        if text and rng.random() < 0.1:
            text = f"{TRIGGER}, {text}" if rng.random() < 0.5 else f"{text}, {TRIGGER}"
            label["style"] = TRIGGER
        texts.append(text)
        for name, (applies_to, values) in _TEXT_TARGETS.items():
            asked = applies_to in ("any", label["kind"])
            classes[name].append(values.index(label[name]) if asked else -100)
    return texts, classes


def text_stage(workdir: Path, budget: Budget, curve: dict[str, list[float]]) -> None:
    """The text encoder alone, trained to predict the drawn scene from its caption.

    Trained with the UNet, through the diffusion loss, the encoder learnt the time of day (a colour over the
    whole picture, most of the loss) and left "a lake", "a desert", "grass" about as close to the empty prompt as
    words it never saw: the UNet could not tell them apart, and drew water and ground at chance (the third round
    in docs/benchmarks.md). Here every state from the end-of-text token on (the 74-odd positions the UNet's
    cross-attention mostly reads) learns, through one linear head per attribute, the scene its caption implies:
    the named attributes, and for the unnamed ones the odds the captions leave (an empty caption: the prior).
    """
    import torch

    from training.word_tokenizer import write_word_tokenizer

    target = workdir / "text_encoder.pt"
    if target.exists():
        return
    tokenizer_dir = workdir / "tokenizer"
    vocab_size = write_word_tokenizer(tokenizer_dir, [*scenes.vocabulary(), TRIGGER])
    tokenizer = _tokenizer(tokenizer_dir)
    torch.manual_seed(SEED + 5)
    text_encoder = _text_encoder(vocab_size)
    width = text_encoder.config.hidden_size
    heads = torch.nn.ModuleDict(
        {name: torch.nn.Linear(width, len(values)) for name, (_, values) in _TEXT_TARGETS.items()}
    )
    parameters = [*text_encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=2e-3, weight_decay=1e-2)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=budget.text_steps, pct_start=0.05
    )
    eos = text_encoder.config.eos_token_id
    rng = random.Random(SEED + 6)
    losses = []
    with _progress(budget.text_steps, "text") as bar:
        for _ in range(budget.text_steps):
            texts, classes = _text_examples(rng, 128)
            ids = _tokens(tokenizer, texts)
            states = text_encoder(ids)[0]
            # From the first end-of-text token on, each position has seen the whole caption (CLIP's causal mask).
            after_end = (ids == eos).long().cumsum(dim=1) > 0
            positions = after_end.sum()
            loss = states.new_zeros(())
            for name, head in heads.items():
                wanted = torch.tensor(classes[name])[:, None].expand(ids.shape)
                wanted = torch.where(after_end, wanted, torch.full_like(wanted, -100))
                logits = head(states)
                loss = (
                    loss
                    + torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), wanted.reshape(-1), ignore_index=-100, reduction="sum"
                    )
                    / positions
                )
            _optimizer_step(loss, optimizer, parameters, lr_schedule)
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    curve["text_loss"] = _thin(losses)
    torch.save({"text": text_encoder.state_dict(), "vocab_size": vocab_size}, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").rename(target)


# ---------------------------------------------------------------------------------------------------- 5. unet


def _unet() -> Any:
    from sdapi.families.tiny import sd_unet

    # The random tiny model's layout with one level more, 8x8 at 512x512 (4x4 at 256x256), where the attention
    # blocks read the prompt. With three levels the lowest was 16x16 at 512x512: its convolutions could not see
    # from the sky to the foreground, and the model stacked two or three horizons and drew a lake as the sea or
    # not at all (the eighth round, docs/benchmarks.md). Attention at 8x8 instead of 16x16 also made a training
    # step about 30 % and a denoising step about 20 % cheaper (the ninth round).
    return sd_unet(block_out_channels=(16, 32, 64, 64), cross_attention_dim=64)


def _noise_schedule() -> Any:
    from diffusers import DDPMScheduler

    from sdapi.families.tiny import SD15_SCHEDULER_CONFIG

    config = {k: v for k, v in SD15_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(config)


def _latent_batch(encoded: Any, size: int, picks: Any, flips: Any, scaling: float) -> Any:
    import torch

    means, logvars = encoded[str(size)]
    mean = means[picks, flips].float()
    std = torch.exp(0.5 * logvars[picks, flips].float())
    return (mean + std * torch.randn_like(mean)) * scaling


def _noise_like(latents: Any) -> Any:
    """Gaussian noise for `latents`, with offset noise: a random shift of each latent channel's mean. SD 1.5's
    schedule leaves the mean of the picture in the noisy latent even at t=999, so a model trained on white noise
    alone keeps the mean brightness and hue of its starting noise: the seed, not "night" or "sunset", decides how
    dark the sky is."""
    import torch

    return torch.randn_like(latents) + OFFSET_NOISE * torch.randn(latents.shape[0], latents.shape[1], 1, 1)


def _loss_weight(schedule: Any, timesteps: Any) -> Any:
    """Each example's weight: min-SNR (gamma 5), and below `HIGH_NOISE_SNR`'s signal-to-noise ratio up to
    `HIGH_NOISE_MOST` times more.

    Min-SNR keeps the many low-noise steps from drowning out the others; and the high-noise steps, where the sky's
    colour and the bands of water and ground are decided, weigh more (their noise prediction error is small even
    when the picture they imply is wrong). Without it and the offset noise a run of 3000 steps drew night, day and
    sunset at chance from their words (40 %); with both, 1000 steps at 256 pixels drew each as asked in 60 of 60
    pictures."""
    import torch

    alphas = schedule.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=5.0) / snr * torch.clamp(HIGH_NOISE_SNR / snr, 1.0, HIGH_NOISE_MOST)


def _diffusion_loss(unet: Any, schedule: Any, latents: Any, hidden: Any) -> Any:
    import torch

    noise = _noise_like(latents)
    timesteps = torch.randint(0, schedule.config.num_train_timesteps, (latents.shape[0],))
    noisy = schedule.add_noise(latents, noise, timesteps)
    predicted = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
    weight = _loss_weight(schedule, timesteps)
    return (weight * ((predicted - noise) ** 2).mean(dim=(1, 2, 3))).mean()


def frozen_text_encoder(workdir: Path) -> tuple[Any, Any, int]:
    """The text stage's tokenizer and encoder, frozen, and the vocabulary's size."""
    import torch

    trained = torch.load(workdir / "text_encoder.pt")
    text_encoder = _text_encoder(trained["vocab_size"])
    text_encoder.load_state_dict(trained["text"])
    text_encoder.requires_grad_(False).eval()
    return _tokenizer(workdir / "tokenizer"), text_encoder, int(trained["vocab_size"])


def unet_stage(workdir: Path, budget: Budget, curve: dict[str, list[float]]) -> None:
    import torch

    final = workdir / "unet_final.pt"
    if final.exists():
        return
    # The text encoder stays as the text stage left it: tuned through the diffusion loss it forgot the words
    # that do not change the picture's colour (text_stage's docstring).
    tokenizer, text_encoder, vocab_size = frozen_text_encoder(workdir)
    torch.manual_seed(SEED + 1)
    unet, ema_unet = _unet(), _unet()
    parameters = list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-2)
    warmup = max(1, budget.unet_steps // 50)

    def rate(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / budget.unet_steps)))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    encoded = torch.load(workdir / "latents.pt")
    scaling = float(encoded["scaling_factor"])
    labels = {size: _load_labels(workdir, size) for size in (256, 512)}
    schedule = _noise_schedule()
    checkpoint = workdir / "unet_checkpoint.pt"
    start, losses = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema_unet.load_state_dict(state["ema_unet"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr"])
        start, losses = state["step"], state["losses"]
        torch.set_rng_state(state["torch_rng"])
        _log(f"resuming the UNet at step {start}")
    else:
        ema_unet.load_state_dict(unet.state_dict())
    rng = random.Random(SEED + start)
    with _progress(budget.unet_steps, "unet") as bar:
        bar.update(start)
        for step in range(start, budget.unet_steps):
            # A model trained mostly at 256² stacks two or three horizons in a 512² picture (its lowest level sees
            # 16x16 instead of 8x8 and nothing tells the middle rows where they are). 600 more steps at 512² only on
            # the sixth round's model took its 512² water from 55 to 73 % and mountains from 60 to 65 % (30 prompts
            # x 2 seeds); so the words are learnt in cheap 256² batches first and the layout at 512² last. In the
            # full bench-adherence this took mountains from 64 to 75 % but water only from 60 to 62 %, and the
            # horizons still stacked until the UNet gained its fourth level (_unet): docs/benchmarks.md, the
            # seventh and ninth rounds.
            late = step >= budget.unet_steps - budget.only_512_last
            size = 512 if late or step % budget.every_512 == budget.every_512 - 1 else 256
            count = budget.batch_512 if size == 512 else budget.batch_256
            picks = torch.tensor([rng.randrange(len(labels[size])) for _ in range(count)])
            flips = torch.tensor([rng.randrange(2) for _ in range(count)])
            latents = _latent_batch(encoded, size, picks, flips, scaling)
            texts = ["" if rng.random() < 0.1 else scenes.caption(scene_of(labels[size][int(i)]), rng) for i in picks]
            with torch.no_grad():
                hidden = text_encoder(_tokens(tokenizer, texts))[0]
            loss = _diffusion_loss(unet, schedule, latents, hidden)
            _optimizer_step(loss, optimizer, parameters, lr_schedule)
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for average, value in zip(ema_unet.parameters(), unet.parameters(), strict=True):
                    average.lerp_(value, 1 - decay)
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            if (step + 1) % 500 == 0 and step + 1 < budget.unet_steps:
                state = {
                    "unet": unet.state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr": lr_schedule.state_dict(),
                    "step": step + 1,
                    "losses": losses,
                    "torch_rng": torch.get_rng_state(),
                }
                torch.save(state, checkpoint.with_suffix(".tmp"))
                checkpoint.with_suffix(".tmp").rename(checkpoint)
    curve["unet_loss"] = _thin(losses)
    torch.save({"unet": ema_unet.state_dict(), "text": text_encoder.state_dict(), "vocab_size": vocab_size}, final)


# ---------------------------------------------------------------------------------------------------- 6. export


def export_stage(workdir: Path, out: Path) -> None:
    import diffusers
    import torch
    from diffusers import AutoencoderKL

    from sdapi.families.tiny import SD15_SCHEDULER_CONFIG

    if (out / "model_index.json").exists():
        return
    final = torch.load(workdir / "unet_final.pt")
    unet, text_encoder = _unet(), _text_encoder(final["vocab_size"])
    unet.load_state_dict(final["unet"])
    text_encoder.load_state_dict(final["text"])
    vae = AutoencoderKL.from_pretrained(str(workdir / "vae_decoder"))
    vae.register_to_config(scaling_factor=float(torch.load(workdir / "latents.pt")["scaling_factor"]))
    tokenizer = _tokenizer(workdir / "tokenizer")
    scheduler = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipeline.to(torch.float16).save_pretrained(str(staging), safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def load_pipeline(model: Path) -> Any:
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ---------------------------------------------------------------------------------------------------- 7. lora


def _lora_targets(unet: Any) -> dict[str, Any]:
    """The UNet modules the style LoRA changes: attention projections and the resnets' 3x3 convolutions."""
    import torch

    chosen = {}
    for path, module in unet.named_modules():
        attention = path.endswith(("to_q", "to_k", "to_v", "to_out.0"))
        conv = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3) and ".resnets." in path
        if attention or conv:
            chosen[path] = module
    return chosen


class _LowRank:
    """A trainable rank-r delta on one Linear or Conv2d, added through a forward hook (the base stays frozen)."""

    def __init__(self, module: Any, generator: Any) -> None:
        import torch

        weight = module.weight
        out_features, in_features = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        # Kaiming-uniform bounds, 1/sqrt(fan-in), as peft initialises lora_A: the up matrix starts at zero, so its
        # gradient scales with the down matrix (at 0.01 it was 4-12x smaller and the LoRA hardly learnt; now it
        # moves the picture more, though not yet towards grey: docs/benchmarks.md, the sixth round).
        bound = 1.0 / math.sqrt(in_features * math.prod(kernel))
        self.down = torch.nn.Parameter(
            (torch.rand(LORA_RANK, in_features, *kernel, generator=generator) * 2 - 1) * bound
        )
        self.up = torch.nn.Parameter(torch.zeros(out_features, LORA_RANK, *((1, 1) if kernel else ())))
        self.module = module
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> Any:
        import torch.nn.functional as functional

        (x,) = inputs
        if self.down.dim() == 4:
            low = functional.conv2d(x, self.down, stride=module.stride, padding=module.padding)
            return output + functional.conv2d(low, self.up)
        return output + functional.linear(functional.linear(x, self.down), self.up)


def lora_stage(workdir: Path, out: Path, loras_dir: Path, budget: Budget, curve: dict[str, list[float]]) -> None:
    import torch
    from safetensors.torch import save_file

    from sdapi.loras.names import kohya_module_key

    target = loras_dir / f"{LORA_NAME}.safetensors"
    if target.exists():
        return
    pipeline = load_pipeline(out)
    unet, text_encoder, tokenizer = pipeline.unet, pipeline.text_encoder, pipeline.tokenizer
    for module in (unet, text_encoder, pipeline.vae):
        module.requires_grad_(False)
    generator = torch.Generator().manual_seed(SEED + 2)
    deltas = {path: _LowRank(module, generator) for path, module in _lora_targets(unet).items()}
    parameters = [p for delta in deltas.values() for p in (delta.down, delta.up)]
    # The LoRA is a style that holds wherever it is loaded, as users expect of one: under the trigger the scene made
    # grey, and under its plain caption and the empty caption the scene as drawn, so that it moves only what the
    # trigger asks for (trained on trigger captions alone, the second model's LoRA also moved the empty caption's
    # prediction, and classifier-free guidance pushed away from the grey both shared). The plain diffusion loss
    # works since the VAE carries colours (scenes version 5, VAE_MORE_OBJECTS): the eleventh round's VAE decoded a
    # grey scene's latents in colour, and its LoRA learnt through the decoder (a pixel loss), whose pictures with
    # this VAE became blue noise.
    optimizer = torch.optim.AdamW(parameters, lr=LORA_LR)
    vae = pipeline.vae
    scaling = float(vae.config.scaling_factor)
    images, labels = _load_images(workdir, 256), _load_labels(workdir, 256)
    schedule = _noise_schedule()
    rng = random.Random(SEED + 3)
    losses = []
    with _progress(budget.lora_steps, "lora") as bar:
        for _ in range(budget.lora_steps):
            picks = [rng.randrange(len(labels)) for _ in range(LORA_BATCH)]
            texts = []
            pictures = np.asarray(images[picks])
            for row, i in enumerate(picks):
                caption = scenes.caption(scene_of(labels[i]), rng)
                texts.append((f"{TRIGGER}, {caption}", caption, "")[row % 3])
                if row % 3 == 0:
                    pictures[row] = pictures[row].mean(axis=2, keepdims=True).round().astype(np.uint8)
            with torch.no_grad():
                latents = _encode_means(vae, pictures) * scaling
                hidden = text_encoder(_tokens(tokenizer, texts))[0]
            loss = _diffusion_loss(unet, schedule, latents, hidden)
            _optimizer_step(loss, optimizer, parameters)
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    curve["lora_loss"] = _thin(losses)
    tensors = {}
    for path, delta in deltas.items():
        key = kohya_module_key("unet", path)
        tensors[f"{key}.lora_down.weight"] = delta.down.detach().half().contiguous()
        tensors[f"{key}.lora_up.weight"] = delta.up.detach().half().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(LORA_RANK)).half()  # alpha = rank: scale 1
    loras_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"ss_network_module": "networks.lora", "trigger": TRIGGER})


# ---------------------------------------------------------------------------------------------------- 8. embedding


def embedding_stage(out: Path, embeddings_dir: Path, budget: Budget, curve: dict[str, list[float]]) -> None:
    """Textual inversion: one new token's input embedding, learnt with the diffusion loss on the renderer's orange
    circles (a colour the scenes draw and no caption names: scenes.UNNAMED_COLOURS), everything else frozen."""
    import torch
    from safetensors.torch import save_file

    target = embeddings_dir / f"{EMBEDDING_NAME}.safetensors"
    if target.exists():
        return
    pipeline = load_pipeline(out)
    unet, text_encoder, tokenizer, vae = pipeline.unet, pipeline.text_encoder, pipeline.tokenizer, pipeline.vae
    for module in (unet, text_encoder, vae):
        module.requires_grad_(False)
    tokenizer.add_tokens([EMBEDDING_TOKEN])
    token_id = tokenizer.convert_tokens_to_ids(EMBEDDING_TOKEN)
    text_encoder.resize_token_embeddings(len(tokenizer))
    embeddings = text_encoder.get_input_embeddings()
    with torch.no_grad():  # the initializer word, as diffusers' textual_inversion asks for one: the shape is known
        embeddings.weight[token_id] = embeddings.weight[tokenizer.convert_tokens_to_ids("circle</w>")]
    embeddings.weight.requires_grad_(True)
    optimizer = torch.optim.Adam([embeddings.weight], lr=5e-3)
    schedule = _noise_schedule()
    scaling = float(vae.config.scaling_factor)
    rng = random.Random(SEED + 4)
    losses = []

    def orange_ball(seed: int) -> np.ndarray:
        scene = scenes.ShapeScene("orange", "circle", rng.choice(list(scenes.BACKGROUNDS)))
        return np.asarray(scenes.render(scene, 256, seed))

    with _progress(budget.embedding_steps, "embedding") as bar:
        for step in range(budget.embedding_steps):
            templates = [rng.choice(EMBEDDING_TEMPLATES) for _ in range(EMBEDDING_BATCH)]
            with torch.no_grad():
                balls = np.stack([orange_ball(SEED + 10 * step + i) for i in range(EMBEDDING_BATCH)])
                latents = _encode_means(vae, balls) * scaling
            hidden = text_encoder(_tokens(tokenizer, [t.format(EMBEDDING_TOKEN) for t in templates]))[0]
            loss = _diffusion_loss(unet, schedule, latents, hidden)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Only the new token's row learns: Adam leaves a row whose gradient is always zero where it is.
            keep = torch.zeros_like(embeddings.weight.grad)
            keep[token_id] = 1
            embeddings.weight.grad *= keep
            optimizer.step()
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    vector = embeddings.weight[token_id].detach()
    curve["embedding_loss"] = _thin(losses)
    embeddings_dir.mkdir(parents=True, exist_ok=True)
    # The layout A1111 and diffusers' load_textual_inversion read: one tensor "emb_params" of shape (vectors, dim).
    save_file({"emb_params": vector.detach().half().unsqueeze(0).contiguous()}, str(target))


# ---------------------------------------------------------------------------------------------------- 9. manifest


def write_manifest(
    root: Path,
    target: Path,
    shipped: list[Path],
    command: str,
    curve: dict[str, list[float]],
    seconds: dict[str, float],
) -> Path:
    """The manifest beside the model: every shipped file's sha256 (paths relative to `root`, the repository)."""
    files = {str(path.relative_to(root)): sha256_of(path) for item in shipped for path in _files(item)}
    manifest = {
        "trained_by": command,
        "scenes_version": scenes.SCENES_VERSION,
        "seed": SEED,
        "files": files,
        "total_bytes": sum(path.stat().st_size for item in shipped for path in _files(item)),
        "seconds_per_stage": {key: round(value, 1) for key, value in seconds.items()},
        "loss_curves": curve,
    }
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def _files(item: Path) -> list[Path]:
    return sorted(path for path in item.rglob("*") if path.is_file()) if item.is_dir() else [item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("data/train-scenes"))
    parser.add_argument("--out", type=Path, default=Path("data/models/scenes-sd"), help="the trained pipeline's folder")
    parser.add_argument("--loras-dir", type=Path, default=Path("data/loras"))
    parser.add_argument("--embeddings-dir", type=Path, default=Path("data/embeddings"))
    parser.add_argument("--quick", action="store_true", help="a smoke test of every stage (minutes, useless weights)")
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    arguments = parser.parse_args(argv)
    import torch

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    budget = Budget.quick() if arguments.quick else Budget()
    if arguments.unet_steps is not None:
        budget.unet_steps = arguments.unet_steps
    workdir = arguments.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    curve_file = workdir / "curves.json"
    curve: dict[str, list[float]] = json.loads(curve_file.read_text()) if curve_file.exists() else {}
    seconds: dict[str, float] = (
        json.loads((workdir / "seconds.json").read_text()) if (workdir / "seconds.json").exists() else {}
    )
    stages: list[tuple[str, Callable[[], None]]] = [
        ("render", lambda: render_stage(workdir, budget)),
        ("vae", lambda: vae_stage(workdir, budget, curve)),
        ("encode", lambda: encode_stage(workdir)),
        ("decoder", lambda: decoder_stage(workdir, budget, curve)),
        ("text", lambda: text_stage(workdir, budget, curve)),
        ("unet", lambda: unet_stage(workdir, budget, curve)),
        ("export", lambda: export_stage(workdir, arguments.out)),
        ("lora", lambda: lora_stage(workdir, arguments.out, arguments.loras_dir, budget, curve)),
        ("embedding", lambda: embedding_stage(arguments.out, arguments.embeddings_dir, budget, curve)),
    ]
    for name, run in stages:
        began = time.monotonic()
        run()
        if name not in seconds:
            seconds[name] = time.monotonic() - began
        curve_file.write_text(json.dumps(curve))
        (workdir / "seconds.json").write_text(json.dumps(seconds))
        _log(f"{name}: done ({seconds[name]:.0f} s)")
    command = "python -m training.train_scenes " + " ".join(argv if argv is not None else sys.argv[1:])
    shipped = [
        arguments.out,
        arguments.loras_dir / f"{LORA_NAME}.safetensors",
        arguments.embeddings_dir / f"{EMBEDDING_NAME}.safetensors",
    ]
    root = Path.cwd().resolve()
    if all(path.resolve().is_relative_to(root) for path in shipped):
        target = manifest_of(arguments.out)
        resolved = [path.resolve() for path in shipped]
        manifest = write_manifest(root, target, resolved, command.strip(), curve, seconds)
        _log(f"manifest: {manifest}")
    _log(f"total {sum(seconds.values()) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
