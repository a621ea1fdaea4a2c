"""Procedurally drawn scenes and their captions: the training data of the embedded default model.

Pure numpy and Pillow, deterministic from a seed. A landscape has a time of day (day, sunset, night: the sky's
colours, a sun or a moon and stars, the light on everything below), mountains (none, green, snowy; one to three
ranges), water (none, a lake in a basin with shores on either side, the sea from edge to edge; both reflect the
sky and show the sun's or moon's path), ground (grass, desert, snow), trees (none, a few, a forest) and clouds. An
object scene is one coloured shape (circle, square, triangle) on a plain background; one of its colours, orange, no
caption ever names (the embedding learns a word for the orange circle). Every scene comes with
captions in the styles people write: short comma lists, sentences, long prompts with quality words; each names
the mountains and water nearly always and a random subset of the rest, which a prompt leaves to the model.

`SCENES_VERSION` changes whenever a scene or a caption drawn from a seed changes: the model manifest records it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCENES_VERSION = 5

TIMES = ("day", "sunset", "night")
MOUNTAINS = ("none", "green", "snowy")
WATERS = ("none", "lake", "sea")
GROUNDS = ("grass", "desert", "snow")
TREES = ("none", "few", "forest")
COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "green": (40, 170, 60),
    "white": (245, 245, 245),
    "orange": (245, 140, 30),
}
# Colours drawn but never named: an orange shape's captions give only its shape, as a real model has seen many things
# it has no word for. The textual-inversion embedding <sdapi-orange-ball> learns a word for the orange circle. Up to
# version 4 the scenes had no orange at all, and the VAE decoded an orange circle as brown (182, 123, 95): no embedding
# could draw orange through it (nor, it turned out, could the model draw any shape's colour: VAE_MORE_OBJECTS in
# training.train_scenes).
UNNAMED_COLOURS = ("orange",)
NAMED_COLOURS = tuple(colour for colour in COLOURS if colour not in UNNAMED_COLOURS)
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}

# Sky colours (top, horizon) and the light on the land, per time of day.
_SKY = {
    "day": ((70, 130, 225), (175, 210, 245)),
    "sunset": ((70, 45, 120), (250, 135, 60)),
    "night": ((4, 6, 22), (22, 32, 66)),
}
# A moonlit night: the land at a third of the day's light, shifted to blue. Darker (version 1 had 0.22-0.38) left
# the night's water, ground and mountains 10-40 levels of 255 apart, which the VAE all but dropped.
_LIGHT = {"day": (1.0, 1.0, 1.0), "sunset": (0.85, 0.62, 0.55), "night": (0.34, 0.38, 0.52)}
# Snow under the moon is the brightest thing below the sky, as on a real moonlit night. Lit like the rest (up to
# version 3) snowy ground came out (80, 91, 128) against the desert's (74, 71, 62), and the tenth round's model drew
# one for the other: 7 of the 11 ground errors in a 40-prompt check were at night.
_SNOW_LIGHT = {**_LIGHT, "night": (0.55, 0.62, 0.8)}
# How bright the path of the sun or moon on water is.
_GLITTER = {"day": 0.3, "sunset": 0.55, "night": 0.6}
_GROUND = {"grass": (70, 145, 55), "desert": (218, 186, 120), "snow": (236, 240, 246)}
_MOUNTAIN = {"green": (55, 115, 60), "snowy": (105, 105, 118)}
_SNOW = (240, 243, 250)


@dataclass(frozen=True)
class Landscape:
    time: str
    mountains: str
    ranges: int
    water: str
    ground: str
    trees: str
    clouds: bool


@dataclass(frozen=True)
class ShapeScene:
    colour: str
    shape: str
    background: str


Scene = Landscape | ShapeScene


def random_scene(rng: random.Random, object_share: float = 0.15) -> Scene:
    if rng.random() < object_share:
        return ShapeScene(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS)))
    mountains = rng.choice(MOUNTAINS)
    return Landscape(
        time=rng.choice(TIMES),
        mountains=mountains,
        ranges=0 if mountains == "none" else rng.randint(1, 3),
        water=rng.choice(WATERS),
        ground=rng.choice(GROUNDS),
        trees=rng.choice(TREES),
        clouds=rng.random() < 0.4,
    )


def labels(scene: Scene) -> dict[str, object]:
    """The scene's attributes, as the adherence scorer's ground truth."""
    return {"kind": "landscape" if isinstance(scene, Landscape) else "object", **asdict(scene)}


# ---------------------------------------------------------------------------------------------------- drawing


def _lit(colour: tuple[int, int, int], time: str, light: dict[str, tuple[float, float, float]] = _LIGHT) -> np.ndarray:
    return np.array(colour, dtype=np.float32) * np.array(light[time], dtype=np.float32)


def _ridge(rng: np.random.Generator, width: int, base: float, height: float) -> np.ndarray:
    """A mountain range's skyline: y (fraction of the image) for each column, peaks up to `height` above `base`."""
    x = np.linspace(0, 1, width, dtype=np.float32)
    y = np.zeros(width, dtype=np.float32)
    for octave in range(4):
        frequency = rng.uniform(0.8, 1.6) * 2**octave
        y += np.sin(2 * np.pi * (frequency * x + rng.uniform(0, 1))) / 2.2**octave
    y = (y - y.min()) / max(float(y.max() - y.min()), 1e-6)
    skyline: np.ndarray = base - height * (0.35 + 0.65 * y)
    return skyline


def _landscape(scene: Landscape, size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    h = w = size
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    horizon = rng.uniform(0.48, 0.6)
    top, bottom = (np.array(c, dtype=np.float32) for c in _SKY[scene.time])
    sky_t = np.clip(rows / horizon, 0, 1)
    canvas = np.broadcast_to(top * (1 - sky_t) + bottom * sky_t, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size

    # The sun (day: small and high; sunset: large, low and red) or the moon and stars.
    if scene.time == "night":
        stars = rng.random((h, w)) < 0.0025
        stars &= yy < horizon * 0.9
        canvas[stars] = (230, 230, 255)
        cx, cy, radius, colour = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.25), 0.045, (235, 235, 215)
    elif scene.time == "sunset":
        cx, cy, radius, colour = rng.uniform(0.2, 0.8), horizon - rng.uniform(0.02, 0.1), 0.08, (255, 95, 40)
    else:
        cx, cy, radius, colour = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.2), 0.05, (255, 250, 215)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
    glow = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (radius * 2.5) ** 2))[..., None]
    canvas = canvas * (1 - 0.35 * glow) + np.array(colour, dtype=np.float32) * 0.35 * glow
    canvas[disc] = colour

    if scene.clouds:
        tint = {"day": (250, 250, 252), "sunset": (240, 160, 150), "night": (60, 64, 80)}[scene.time]
        for _ in range(int(rng.integers(2, 6))):
            ccx, ccy = rng.uniform(0, 1), rng.uniform(0.05, horizon * 0.6)
            for _ in range(4):
                ox, oy = ccx + rng.uniform(-0.07, 0.07), ccy + rng.uniform(-0.015, 0.015)
                blob = ((xx - ox) / 0.07) ** 2 + ((yy - oy) / 0.025) ** 2 < 1
                canvas[blob] = canvas[blob] * 0.2 + np.array(tint, dtype=np.float32) * 0.8

    sky = canvas.copy()  # what water reflects
    if scene.mountains != "none":
        for index in range(scene.ranges):
            depth = (index + 1) / scene.ranges  # the nearest range last, darkest and lowest
            skyline = _ridge(rng, w, horizon, rng.uniform(0.14, 0.3) * (1.2 - 0.3 * depth))
            rock = _lit(_MOUNTAIN[scene.mountains], scene.time) * (1.15 - 0.3 * depth)
            mask = yy >= skyline[None, :]
            canvas[mask] = np.broadcast_to(rock, canvas.shape)[mask]
            if scene.mountains == "snowy":
                snow_line = skyline + rng.uniform(0.05, 0.08)
                caps = mask & (yy < snow_line[None, :])
                canvas[caps] = _lit(_SNOW, scene.time, _SNOW_LIGHT)

    ground = _lit(_GROUND[scene.ground], scene.time, _SNOW_LIGHT if scene.ground == "snow" else _LIGHT)
    land = yy >= horizon
    canvas[land] = np.broadcast_to(ground, canvas.shape)[land]
    if scene.water != "none":
        water_end = horizon + (rng.uniform(0.12, 0.2) if scene.water == "lake" else rng.uniform(0.28, 0.36))
        water_rows = (yy >= horizon) & (yy < water_end)
        if scene.water == "lake":
            # A lake is a basin with shores on either side: half an ellipse hanging from the horizon, ground left and
            # right of it. (Up to version 2 it ran edge to edge like the sea and only ended nearer the horizon: the
            # seventh round's model drew 19 of 32 lakes as the sea.)
            centre, half_width = rng.uniform(0.38, 0.62), rng.uniform(0.22, 0.34)
            depth_share = np.clip((yy - horizon) / (water_end - horizon), 0, 1)
            water_rows &= np.abs(xx - centre) < half_width * np.sqrt(1 - depth_share**2)
        # The sky mirrored about the horizon, darkened and shifted to blue, with a few ripple lines.
        mirror = np.clip((2 * horizon - yy) * (h - 1), 0, h - 1).astype(int)
        reflected = sky[mirror, (xx * (w - 1)).astype(int)]
        base = np.array((30, 100, 140) if scene.water == "lake" else (20, 60, 150), dtype=np.float32)
        water = 0.35 * reflected + 0.65 * base * np.array(_LIGHT[scene.time], dtype=np.float32)
        ripples = (np.sin(yy * size * 1.3 + rng.uniform(0, 6)) > 0.93)[..., None]
        water = water * (1 + 0.12 * ripples)
        # The path of the sun or moon on the water: broken bright strokes under it, widening towards the viewer.
        depth = np.clip(yy - horizon, 0, None)
        path = np.abs(xx - cx) < radius * 0.8 + 0.35 * depth
        strokes = np.sin(yy * size * 0.9 + np.sin(xx * size * 0.21) * 2.0 + rng.uniform(0, 6)) > 0.2
        glitter = (path & strokes).astype(np.float32)[..., None] * _GLITTER[scene.time]
        water = water * (1 - glitter) + np.array(colour, dtype=np.float32) * glitter
        canvas[water_rows] = water[water_rows]
        tree_row = horizon  # trees stand on the far shore
    else:
        tree_row = horizon + 0.02

    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if scene.trees != "none":
        draw = ImageDraw.Draw(image)
        count = int(rng.integers(3, 7)) if scene.trees == "few" else int(rng.integers(18, 32))
        leaf = tuple(int(c) for c in _lit((30, 90, 40), scene.time))
        trunk = tuple(int(c) for c in _lit((90, 60, 30), scene.time))
        positions = sorted(rng.uniform(0.02, 0.98, count))
        for x in positions:
            base_y = tree_row + rng.uniform(0.0, 0.03 if scene.trees == "forest" else 0.06)
            tall = rng.uniform(0.07, 0.13)
            half = tall * 0.32
            px, py = x * size, base_y * size
            draw.rectangle((px - size * 0.006, py - tall * size * 0.2, px + size * 0.006, py), fill=trunk)
            draw.polygon(
                [
                    (px, py - tall * size),
                    (px - half * size, py - tall * size * 0.15),
                    (px + half * size, py - tall * size * 0.15),
                ],
                fill=leaf,
            )
    return image.filter(ImageFilter.GaussianBlur(radius=size / 512))


def _shape(scene: ShapeScene, size: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    if scene.colour == "white" and scene.background == "white":
        image = Image.new("RGB", (size, size), BACKGROUNDS["black"])
    draw = ImageDraw.Draw(image)
    half = size * rng.uniform(0.18, 0.3)
    cx, cy = size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half * 0.8), (cx + half, cy + half * 0.8)], fill=fill)
    return image


def render(scene: Scene, size: int, seed: int) -> Image.Image:
    """The scene drawn at size x size pixels; the same (scene, size, seed) always gives the same pixels."""
    if isinstance(scene, ShapeScene):
        return _shape(scene, size, seed)
    return _landscape(scene, size, seed)


# ---------------------------------------------------------------------------------------------------- captions

TIME_WORDS = {
    "day": ["during the day", "at noon", "daytime", "on a sunny day", "in daylight", "day", "blue sky"],
    "sunset": ["at sunset", "sunset", "during sunset", "at dusk", "golden hour", "evening", "sunset sky"],
    "night": ["at night", "night", "under the moon", "night time", "starry night", "midnight", "night sky"],
}
MOUNTAIN_WORDS = {
    "green": ["green mountains", "green hills", "grassy mountains", "mountains"],
    "snowy": ["snowy mountains", "snow-capped mountains", "snow covered peaks", "mountains"],
}
WATER_WORDS = {
    "lake": ["a lake", "lakes", "a calm lake", "a mountain lake", "lake water", "a lake with reflections", "water"],
    "sea": ["the sea", "the ocean", "the coast", "sea water", "the ocean with reflections", "water"],
}
# "water" on its own names both (version 5): a negative prompt "water" says little if no caption ever says it alone,
# and the eleventh round's model drew water in 12 of 12 pictures of a lake with and without that negative prompt.
GROUND_WORDS = {
    "grass": ["grass", "a meadow", "green fields", "grassland"],
    "desert": ["a desert", "sand dunes", "sand", "desert sand"],
    "snow": ["snow", "snowy ground", "a snowy field", "winter snow"],
}
TREE_WORDS = {"few": ["trees", "a few trees", "pine trees"], "forest": ["a forest", "a pine forest", "woods"]}
CLOUD_WORDS = ["clouds", "a cloudy sky", "white clouds"]
QUALITY_WORDS = ["highly detailed", "4k", "beautiful", "masterpiece", "best quality", "8k", "sharp focus", "peaceful"]
_OPENINGS = ["a landscape with", "a beautiful landscape with", "a view of", "a painting of", "a photo of", "scenery,"]


def _landscape_phrases(scene: Landscape, rng: random.Random) -> list[str]:
    phrases = []
    # Mountains and water are nearly always named when drawn, as a person captioning the picture would: a prompt
    # that names neither should get neither. Named in 80 % of the scenes that have them (up to version 2), the
    # captions left a model that learnt them perfectly to draw water in 29 % of the pictures whose prompt names none
    # (a third of the scenes have none; 20 % of the other two thirds lose the word), and the seventh round drew it
    # in half of them. The time of day, ground, trees and clouds are left out more often: the model's to choose.
    if rng.random() < 0.85:
        phrases.append(rng.choice(TIME_WORDS[scene.time]))
    if scene.mountains != "none" and rng.random() < 0.95:
        phrases.append(rng.choice(MOUNTAIN_WORDS[scene.mountains]))
    if scene.water != "none" and rng.random() < 0.95:
        phrases.append(rng.choice(WATER_WORDS[scene.water]))
    if rng.random() < 0.8:
        phrases.append(rng.choice(GROUND_WORDS[scene.ground]))
    if scene.trees != "none" and rng.random() < 0.7:
        phrases.append(rng.choice(TREE_WORDS[scene.trees]))
    if scene.clouds and rng.random() < 0.6:
        phrases.append(rng.choice(CLOUD_WORDS))
    rng.shuffle(phrases)
    return phrases


def caption(scene: Scene, rng: random.Random) -> str:
    """One caption for the scene, in one of the styles people write prompts in."""
    if isinstance(scene, ShapeScene):
        named = "" if scene.colour in UNNAMED_COLOURS else f"{scene.colour} "
        thing = f"a {named}{scene.shape}"
        return rng.choice(
            [
                thing,
                f"{thing} on a {scene.background} background",
                f"{named}{scene.shape}, simple, flat",
                f"a simple {named}{scene.shape}, {rng.choice(QUALITY_WORDS)}",
            ]
        )
    phrases = _landscape_phrases(scene, rng)
    style = rng.random()
    if not phrases:
        return rng.choice(["a landscape", "scenery", "a beautiful landscape, 4k", "nature"])
    if style < 0.35:  # a comma list
        return ", ".join(phrases)
    if style < 0.7:  # a sentence
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{rng.choice(_OPENINGS)} {body}"
    # the long prompt: a sentence, then comma tags and quality words, like the API document's example
    first = phrases[:2]
    rest = phrases[2:]
    body = " and ".join(first)
    tags = rest + rng.sample(QUALITY_WORDS, rng.randint(1, 3))
    return f"{rng.choice(_OPENINGS)} {body}, " + ", ".join(tags)


def vocabulary() -> list[str]:
    """Every word the captions use (the tokenizer gives each its own token)."""
    words: set[str] = set()
    texts = [*QUALITY_WORDS, *_OPENINGS, *CLOUD_WORDS, "and", "on", "background", "simple", "flat", "nature", "scenery"]
    for table in (TIME_WORDS, MOUNTAIN_WORDS, WATER_WORDS, GROUND_WORDS, TREE_WORDS):
        for phrases in table.values():
            texts.extend(phrases)
    texts.extend([*NAMED_COLOURS, *SHAPES, *BACKGROUNDS, "water", "monochrome", "black and white"])
    for text in texts:
        for word in text.replace(",", " ").replace("-", " - ").split():
            words.add(word.lower())
    return sorted(words)
