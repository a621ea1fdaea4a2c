"""Cross-request batches on the engines: each member's pixels are those of its own run, on torch (SD 1.x, SDXL,
text- and image-to-image, several schedulers) and on an ONNX export; a member that leaves (cancelled) does not
disturb the others. "Those of its own run" within the seed rule's tolerance, as for a task's own batches: the CPU's
kernels may round a batch of rows differently from one row (a mean difference of at most 1 of 255)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdapi.config import ModelConfig, OnnxConfig
from sdapi.core.params import InitImageInfo
from sdapi.engines import Run
from sdapi.engines.onnx_engine import OnnxEngine
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import TaskCancelled
from tests.support.factories import make_params
from tests.support.services import mean_abs_diff

SIZE = 64


def _torch(path) -> TorchEngine:
    engine = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def sd15(tiny_model):
    return _torch(tiny_model)


def _members(scheduler=None, init_images=None, **shared):
    """Three tasks of one batch: their own prompts, negative prompts, seeds and image counts."""
    own = [
        {"prompt": "a red ball", "seed": 1},
        {"prompt": "snowy mountains at night", "negative_prompt": "blurry", "seed": 7, "num_images": 2},
        {"prompt": "x", "seed": 3},
    ]
    members = []
    for index, mine in enumerate(own):
        init = None if init_images is None else init_images[index]
        extra = {} if init is None else {"init_image": InitImageInfo(SIZE, SIZE, "png"), "strength": 0.6}
        fields = {"width": SIZE, "height": SIZE, "num_inference_steps": 6, "scheduler": scheduler}
        params = make_params(**(fields | extra | mine | shared))
        members.append(Run(params, init, on_step=lambda *_: None))
    return members


def _alone(engine, members):
    return [engine.generate(member).images for member in members]


def _assert_same(expected, generated):
    assert [len(images) for images in expected] == [len(g.images) for g in generated]
    for alone, batched in zip(expected, generated, strict=True):
        for a, b in zip(alone, batched.images, strict=True):
            assert a.size == b.size == (SIZE, SIZE)
            assert mean_abs_diff(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) <= 1.0


@pytest.mark.parametrize("scheduler", [None, "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_each_member_gets_the_pixels_of_its_own_run(sd15, scheduler):
    members = _members(scheduler)
    _assert_same(_alone(sd15, members), sd15.generate_batch(members))
    # Not one picture made four times: the members' prompts and seeds are theirs.
    first, second = (np.asarray(g.images[0], dtype=np.float64) for g in sd15.generate_batch(members)[:2])
    assert mean_abs_diff(first, second) > 1.0


def test_sdxl_members_keep_their_pixels(tiny_sdxl):
    engine = _torch(tiny_sdxl)
    members = _members()
    _assert_same(_alone(engine, members), engine.generate_batch(members))


def test_image_to_image_members_keep_their_own_init_image(sd15):
    rng = np.random.default_rng(0)
    inits = [Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(3)]
    members = _members(init_images=inits)
    _assert_same(_alone(sd15, members), sd15.generate_batch(members))


def test_a_member_that_leaves_does_not_disturb_the_others(sd15):
    members = _members("EulerDiscreteScheduler")
    expected = _alone(sd15, members)
    seen: list[int] = []

    def leaves_at_step_two(step, total, done):
        seen.append(step)
        if step >= 2:
            raise TaskCancelled("任务已取消")

    members[1] = Run(members[1].params, on_step=leaves_at_step_two)
    steps: list[int] = []
    members[0] = Run(members[0].params, on_step=lambda step, total, done: steps.append(step))
    first, gone, third = sd15.generate_batch(members)
    assert gone is None
    assert seen == [1, 2]  # told of no step after it left
    assert steps == list(range(1, 7))  # the others heard of every step
    _assert_same([expected[0], expected[2]], [first, third])


def test_a_batch_whose_members_all_left_stops(sd15):
    calls: list[int] = []

    def cancelled(step, total, done):
        calls.append(step)
        raise TaskCancelled("任务已取消")

    members = [Run(m.params, on_step=cancelled) for m in _members(num_inference_steps=50)]
    with pytest.raises(TaskCancelled):
        sd15.generate_batch(members)
    assert calls == [1, 1, 1]  # at the first step, not after the fifty


def test_onnx_members_get_the_pixels_of_their_own_onnx_run(plain_export, tiny_model, tmp_path):
    engine = OnnxEngine(ModelConfig(path=str(tiny_model), onnx_path=str(plain_export)), OnnxConfig(), tmp_path)
    engine.load()
    members = _members()
    generated = engine.generate_batch(members)
    assert {g.facts.engine for g in generated} == {"onnx"}
    _assert_same(_alone(engine, members), generated)


def test_members_with_a_vae_or_eta_get_their_own_runs_pixels(tiny_model, tmp_path):
    """What the batch key keeps equal across members but the batch path must still apply: a VAE of vae.dir (swapped
    in for the batch) and DDIM's eta (handed to the pipeline). Without them the batch made other pictures."""
    from sdapi.core.request import VaeSpec
    from tests.support.vae_files import write_vae_folder

    folder = write_vae_folder(tiny_model, tmp_path / "warm-vae", seed=11)
    engine = TorchEngine(
        ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"), vae_files=lambda name, sha: folder
    )
    engine.load()
    for shared in (
        {"vae": VaeSpec("warm-vae", "0" * 64)},
        {"scheduler": "DDIMScheduler", "step_options": {"eta": 1.0}},
    ):
        members = _members(**shared)
        _assert_same(_alone(engine, members), engine.generate_batch(members))
        plain = _members(**{key: value for key, value in shared.items() if key == "scheduler"})
        differs = np.asarray(engine.generate_batch(plain)[0].images[0], dtype=np.float64)
        assert np.abs(differs - np.asarray(_alone(engine, members)[0][0], dtype=np.float64)).mean() > 1.0
