"""`make bench-adherence`: does the embedded default model draw what its prompt says?

100 held-out prompts (attribute combinations and phrasings drawn with a seed the training never used), 4 seeds
each, rendered by the service over HTTP at 512x512, 20 steps. Each picture is scored by
training.scene_stats.AttributeScorer, calibrated on the scene renderer's own pictures; the same scorer on
the renderer's pictures of the same prompts is the ceiling. Then five behaviours: a negative prompt removes an
attribute ("a lake" with negative "water"), a shape is drawn in the colour asked for, the embedding draws its
orange ball (the share of orange pixels, against "a circle" and "a white circle"), image-to-image at low strength
keeps the layout, and the style LoRA's trigger changes the style score (saturation).
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import describe_machine
from sdapi.families.tiny import make_tiny_model
from sdapi.observability.stages import Stages
from tests.support.services import ServiceProcess, fetch_image, generate, write_config
from training import scene_stats, scenes

REPO = Path(__file__).resolve().parent.parent
SCORED = ("time", "mountains", "water", "ground")
PROMPT_SEED = 777_001  # not a training seed: these combinations and phrasings are held out
SEEDS = 4


def held_out_prompts(count: int) -> list[tuple[str, scenes.Landscape]]:
    rng = random.Random(PROMPT_SEED)
    prompts = []
    for _ in range(count):
        scene = scenes.Landscape(
            time=rng.choice(scenes.TIMES),
            mountains=rng.choice(["green", "snowy", "none"]),
            ranges=2,
            water=rng.choice(scenes.WATERS),
            ground=rng.choice(scenes.GROUNDS),
            trees="none",
            clouds=False,
        )
        phrases = [rng.choice(scenes.TIME_WORDS[scene.time]), rng.choice(scenes.GROUND_WORDS[scene.ground])]
        if scene.mountains != "none":
            phrases.append(rng.choice([w for w in scenes.MOUNTAIN_WORDS[scene.mountains] if w != "mountains"]))
        if scene.water != "none":  # "water" alone names either: the scorer could not say which was asked
            phrases.append(rng.choice([w for w in scenes.WATER_WORDS[scene.water] if w != "water"]))
        rng.shuffle(phrases)
        style = rng.random()
        if style < 0.4:
            prompt = ", ".join(phrases)
        elif style < 0.7:
            prompt = "a landscape with " + ", ".join(phrases[:-1]) + " and " + phrases[-1]
        else:
            prompt = "a beautiful landscape with " + " and ".join(phrases[:2]) + ", " + ", ".join(phrases[2:])
            prompt += ", highly detailed, 4k"
        prompts.append((prompt, scene))
    return prompts


def _accuracy(hits: dict[str, list[bool]]) -> dict[str, float]:
    return {attribute: 100.0 * float(np.mean(values)) for attribute, values in hits.items()}


def seconds_per_image(model: Path, folder: Path, size: int, steps: int, count: int = 8) -> float:
    """Median seconds of one 512x512 text-to-image request through a service on `model` (after a warm-up)."""
    config = write_config(folder, model, log_level="WARNING")
    with ServiceProcess(config) as service:
        service.wait_ready(timeout=300)
        with service.client() as client:
            client.timeout = 600
            body = {"prompt": "a lake at sunset", "width": size, "height": size, "num_inference_steps": steps}
            generate(client, **body, seed=0)
            durations = []
            for seed in range(count):
                began = time.perf_counter()
                generate(client, **body, seed=seed + 1)
                durations.append(time.perf_counter() - began)
    return float(np.median(durations))


def _images(client, **body) -> list[Image.Image]:  # type: ignore[no-untyped-def]
    task = generate(client, **body)
    assert task["status"] == "completed", task
    # The contract's rule: one image is result_url (result_urls null), several are result_urls.
    return [fetch_image(url) for url in task["result_urls"] or [task["result_url"]]]


# The embedding's prompts: its name where a shape word would go, against the plain words for a circle.
EMBEDDING_COMPARISON = ("sdapi-orange-ball", "circle", "white circle")
EMBEDDING_TEMPLATES = ("a {}", "a {} on a black background", "a {} on a gray background")

CONTRACT_EXAMPLE = {
    "prompt": "a beautiful landscape with mountains and lakes, sunset, highly detailed, 4k",
    "width": 512,
    "height": 512,
    "guidance_scale": 7.5,
    "num_inference_steps": 30,
}


def save_contract_example(client, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    """The API document's text-to-image example for seeds 1-3, side by side, and the same with the style LoRA."""
    rows = []
    for extra in ({}, {"loras": [{"name": "monochrome", "weight": 1.0}]}):
        body = {**CONTRACT_EXAMPLE, **extra}
        if extra:
            body["prompt"] = "monochrome, " + str(body["prompt"])
        rows.append([_images(client, **body, seed=seed)[0] for seed in (1, 2, 3)])
    sheet = Image.new("RGB", (512 * 3, 512 * len(rows)))
    for row, images in enumerate(rows):
        for column, image in enumerate(images):
            sheet.paste(image, (512 * column, 512 * row))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "contract-example.png"
    sheet.save(target, optimize=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "data" / "models" / "scenes-sd")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    arguments = parser.parse_args()
    prompts = held_out_prompts(arguments.prompts)
    generated: dict[str, list[bool]] = {attribute: [] for attribute in SCORED}
    per_class: dict[tuple[str, str], list[bool]] = {}  # (attribute, the class the prompt asks for): hits
    generated_clean: dict[str, list[bool]] = {attribute: [] for attribute in SCORED}
    ceiling: dict[str, list[bool]] = {attribute: [] for attribute in SCORED}
    with tempfile.TemporaryDirectory() as folder, Stages(10) as stages:
        stages.stage("calibrating the scorer on rendered scenes")
        scorer = scene_stats.calibrated_scorer()
        # The scorer of the rounds before the sixth (fitted on clean renders only), for comparison with their figures.
        clean_scorer = scene_stats.calibrated_scorer(augmented=False)
        for index, (_, scene) in enumerate(prompts):
            for seed in range(SEEDS):
                predicted = scorer.predict(scenes.render(scene, 256, PROMPT_SEED + 10 * index + seed))
                for attribute in SCORED:
                    ceiling[attribute].append(predicted[attribute] == getattr(scene, attribute))
        stages.stage("starting the service on the trained model")
        config = write_config(
            Path(folder),
            arguments.model,
            log_level="WARNING",
            defaults={"width": arguments.size, "height": arguments.size, "num_inference_steps": arguments.steps},
            loras={"dir": str(REPO / "data" / "loras")},
            embeddings={"dir": str(REPO / "data" / "embeddings")},
        )
        common = {"guidance_scale": 7.5}
        with ServiceProcess(config) as service:
            service.wait_ready(timeout=300)
            with service.client() as client:
                client.timeout = 600
                stages.stage(f"{len(prompts)} prompts x {SEEDS} seeds")
                began = time.perf_counter()
                for index, (prompt, scene) in enumerate(prompts):
                    images = _images(client, prompt=prompt, seed=1000 * index, num_images=SEEDS, **common)
                    for image in images:
                        for hits, judge in ((generated, scorer), (generated_clean, clean_scorer)):
                            predicted = judge.predict(image)
                            for attribute in SCORED:
                                hits[attribute].append(predicted[attribute] == getattr(scene, attribute))
                            if judge is scorer:
                                for attribute in SCORED:
                                    asked = getattr(scene, attribute)
                                    per_class.setdefault((attribute, asked), []).append(predicted[attribute] == asked)
                    stages.detail(f"{index + 1}/{len(prompts)}")
                per_image = (time.perf_counter() - began) / (len(prompts) * SEEDS)

                stages.stage("the contract's example prompt at 512x512 and its body's 30 steps: docs/default-model/")
                save_contract_example(client, REPO / "docs" / "default-model")

                stages.stage("negative prompt: 'a lake' with and without negative 'water'")
                water_without, water_with = [], []
                for index, time_of_day in enumerate(["at sunset", "during the day", "at night"] * 4):
                    body = {"prompt": f"a landscape with a lake, {time_of_day}", "seed": 50 + index, **common}
                    water_without += [scorer.predict(i)["water"] != "none" for i in _images(client, **body)]
                    water_with += [
                        scorer.predict(i)["water"] != "none" for i in _images(client, **body, negative_prompt="water")
                    ]

                stages.stage("shapes: is a coloured shape drawn in its colour?")
                colour_hits: dict[str, list[bool]] = {}
                for colour in scenes.NAMED_COLOURS:
                    for shape in scenes.SHAPES:
                        body = {"prompt": f"a {colour} {shape} on a black background", "seed": 60, **common}
                        colour_hits.setdefault(colour, []).extend(
                            scene_stats.nearest_colour(scene_stats.shape_colour(image), scenes.NAMED_COLOURS) == colour
                            for image in _images(client, **body, num_images=SEEDS)
                        )

                stages.stage("the embedding: the share of orange pixels under its name and under plain words")
                orange: dict[str, list[float]] = {}
                for thing in EMBEDDING_COMPARISON:
                    for template in EMBEDDING_TEMPLATES:
                        body = {"prompt": template.format(thing), "seed": 70, "num_images": SEEDS, **common}
                        orange.setdefault(thing, []).extend(map(scene_stats.orange_share, _images(client, **body)))

                stages.stage("image-to-image at strength 0.3 and the style LoRA")
                kept, differences = [], []
                for index, (prompt, scene) in enumerate(prompts[:12]):
                    init = scenes.render(scene, arguments.size, 90 + index)
                    buffer = io.BytesIO()
                    init.save(buffer, format="PNG")
                    init_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
                    out = _images(client, prompt=prompt, init_image=init_url, strength=0.3, seed=index, **common)[0]
                    truth, predicted = scorer.predict(init), scorer.predict(out)
                    kept.append(np.mean([truth[a] == predicted[a] for a in SCORED]))
                    a = np.asarray(init.resize(out.size), dtype=np.float32)
                    differences.append(float(np.abs(a - np.asarray(out, dtype=np.float32)).mean()))
                plain, styled = [], []
                for index, (prompt, _) in enumerate(prompts[:12]):
                    plain += [scene_stats.saturation(i) for i in _images(client, prompt=prompt, seed=index, **common)]
                    styled += [
                        scene_stats.saturation(i)
                        for i in _images(
                            client,
                            prompt=f"monochrome, {prompt}",
                            seed=index,
                            loras=[{"name": "monochrome", "weight": 1.0}],
                            **common,
                        )
                    ]
        stages.stage("time per 512x512 image: the trained model and the random tiny model it replaced")
        trained_seconds = seconds_per_image(arguments.model, Path(folder) / "speed-trained", 512, 20)
        tiny = make_tiny_model(Path(folder) / "tiny-sd")
        tiny_seconds = seconds_per_image(tiny, Path(folder) / "speed-tiny", 512, 20)
    stages.stage("report")
    print(f"machine: {describe_machine()}")
    print(
        f"{len(prompts)} held-out prompts x {SEEDS} seeds at {arguments.size}x{arguments.size}, "
        f"{arguments.steps} steps, CFG 7.5: {per_image:.2f} s per image"
    )
    print(
        f"one 512x512 image, 20 steps, through the service: trained model {trained_seconds:.2f} s, "
        f"random tiny model {tiny_seconds:.2f} s ({trained_seconds / tiny_seconds:.2f}x)"
    )
    print(
        "| attribute | trained model | renderer (scorer ceiling) | trained model, scorer fitted on clean renders only |"
    )
    print("|---|---|---|---|")
    model_accuracy, ceiling_accuracy, clean_accuracy = (
        _accuracy(generated),
        _accuracy(ceiling),
        _accuracy(generated_clean),
    )
    for attribute in SCORED:
        print(
            f"| {attribute} | {model_accuracy[attribute]:.1f} % | {ceiling_accuracy[attribute]:.1f} % "
            f"| {clean_accuracy[attribute]:.1f} % |"
        )
    for attribute in SCORED:
        classes = sorted(asked for scored, asked in per_class if scored == attribute)
        print(
            f"{attribute}, by the class the prompt asks for: "
            + ", ".join(
                f"{asked} {100 * np.mean(per_class[(attribute, asked)]):.0f} % of {len(per_class[(attribute, asked)])}"
                for asked in classes
            )
        )
    print(
        f"negative prompt 'water' on 'a landscape with a lake': water seen in {100 * np.mean(water_without):.0f} % "
        f"of {len(water_without)} pictures without it, {100 * np.mean(water_with):.0f} % with it"
    )
    print(
        "shapes on a black background drawn in the colour asked for (the mean colour of the pixels that stand out, "
        "nearest of the named colours): "
        + ", ".join(f"{colour} {100 * np.mean(hits):.0f} % of {len(hits)}" for colour, hits in colour_hits.items())
    )
    print(
        f"embedding, mean share of orange pixels in {len(orange[EMBEDDING_COMPARISON[0]])} pictures each: "
        + ", ".join(f"'{thing}' {100 * np.mean(orange[thing]):.1f} %" for thing in EMBEDDING_COMPARISON)
    )
    print(
        f"image-to-image, strength 0.3: {100 * np.mean(kept):.0f} % of scored attributes kept from the init image, "
        f"mean absolute pixel difference {np.mean(differences):.1f} / 255"
    )
    print(
        f"style LoRA 'monochrome' at weight 1 with its trigger: mean saturation {np.mean(plain):.3f} without, "
        f"{np.mean(styled):.3f} with"
    )


if __name__ == "__main__":
    main()
