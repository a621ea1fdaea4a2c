"""The playground page in a real headless browser (Debian's chromium, driven by Playwright), against the real
service: controls found by their labels, as a screen reader would."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.adapter_files import model_modules, write_adapter
from tests.support.controlnet_files import tiny_controlnet, write_controlnet
from tests.support.services import API_KEY, gradient_image

pytestmark = [pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_model):
    loras = tmp_path_factory.mktemp("playground-loras")
    write_adapter(loras / "ink.safetensors", model_modules(tiny_model), "lora", seed=5)
    controlnets = tmp_path_factory.mktemp("playground-controlnets")
    write_controlnet(controlnets / "tiny-edges", tiny_controlnet(tiny_model, seed=1))
    return make_service("playground", loras={"dir": str(loras)}, controlnet={"dir": str(controlnets)})


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), "chromium is missing: .ci/run installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, service):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.goto(f"{service.url}/")
    opened.get_by_label("API Key").fill(API_KEY)
    opened.get_by_label("API Key").press("Tab")  # the key is saved and the lists load on change
    yield opened
    context.close()


def fill_small(page: Page, steps: int = 3) -> None:
    page.get_by_label("宽度").fill("128")
    page.get_by_label("高度").fill("96")
    page.get_by_label("采样步数").fill(str(steps))


def pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB"))


def test_make_a_picture_see_its_seed_and_make_it_again(page, service, tmp_path):
    page.get_by_label("提示词", exact=True).fill("a castle on a hill")
    page.get_by_label("负面提示词").fill("fog")
    page.get_by_label("模型").select_option("default")  # from the server's list; sets its native size
    expect(page.get_by_label("宽度")).to_have_value("512")
    fill_small(page)
    page.get_by_label("采样方法").select_option("EulerDiscreteScheduler")
    page.get_by_role("button", name="生成").click()
    first = page.locator("#gallery figure").first
    expect(first.locator("img")).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("完成")
    assert first.locator("img").evaluate("img => img.complete && img.naturalWidth") == 128
    shown_seed = int(first.locator(".seed").inner_text())
    with service.client() as client:
        [task] = client.get("/api/v1/tasks?limit=1").json()["tasks"]
    assert task["seed"] == shown_seed and task["status"] == "completed" and task["model"] == "default"
    first_url = first.locator("img").get_attribute("src")
    assert first_url == task["result_url"]
    page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)

    # Reuse loads the image's parameters back into the form; generating again gives the same picture.
    page.get_by_label("提示词", exact=True).fill("something else")
    first.get_by_role("button", name="复用参数").click()
    expect(page.get_by_label("种子")).to_have_value(str(shown_seed))
    expect(page.get_by_label("提示词", exact=True)).to_have_value("a castle on a hill")
    expect(page.get_by_label("采样方法")).to_have_value("EulerDiscreteScheduler")
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#gallery figure")).to_have_count(2, timeout=60_000)
    again = page.locator("#gallery figure").first.locator("img").get_attribute("src")
    assert again != first_url and np.array_equal(pixels(again), pixels(first_url))


def drop_image(page: Page, image: Image.Image) -> None:
    """Drop `image` on the init image zone, as a file dragged from the desktop."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    page.locator("#drop").evaluate(
        """(zone, data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "photo.png", { type: "image/png" }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        base64.b64encode(buffer.getvalue()).decode(),
    )


def test_a_lora_and_a_dropped_init_image(page, service, tmp_path):
    page.get_by_text("LoRA 风格").click()
    page.get_by_label("ink · lora").check()
    page.get_by_label("ink 权重").fill("0.5")
    drop_image(page, gradient_image(96, 64))
    expect(page.get_by_label("重绘强度")).to_be_visible()
    page.get_by_label("重绘强度").evaluate(
        "(slider) => { slider.value = '0.6'; slider.dispatchEvent(new Event('input')); }"
    )
    page.get_by_label("提示词", exact=True).fill("repaint it")
    page.get_by_label("采样步数").fill("4")
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#status")).to_contain_text("完成", timeout=60_000)
    image = page.locator("#gallery figure").first.locator("img")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 64]
    with service.client() as client:
        [task] = client.get("/api/v1/tasks?limit=1").json()["tasks"]
    assert task["loras"] == [{"name": "ink", "weight": 0.5}]


def test_draw_a_mask_on_the_init_image_and_get_it_inpainted(page, service):
    picture = gradient_image(96, 64)
    drop_image(page, picture)
    page.get_by_text("局部重绘与扩图").click()
    canvas = page.get_by_label("蒙版画布")
    expect(canvas).to_be_visible()
    page.get_by_label("笔刷大小").evaluate(
        "(slider) => { slider.value = '12'; slider.dispatchEvent(new Event('input')); }"
    )
    page.get_by_label("边缘模糊").fill("0")
    box = canvas.bounding_box()
    middle_y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.35, middle_y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.65, middle_y, steps=8)
    page.mouse.up()
    page.get_by_label("重绘强度").evaluate(
        "(slider) => { slider.value = '1'; slider.dispatchEvent(new Event('input')); }"
    )
    page.get_by_label("提示词", exact=True).fill("a red stripe")
    page.get_by_label("采样步数").fill("4")
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#status")).to_contain_text("完成", timeout=60_000)
    out = pixels(page.locator("#gallery figure").first.locator("img").get_attribute("src")).astype(float)
    original = np.asarray(picture, dtype=float)
    assert out.shape == original.shape
    # The stroke runs across the middle: the top and bottom bands are the init image's, the stroke is redrawn.
    assert np.array_equal(out[:16], original[:16]) and np.array_equal(out[-16:], original[-16:])
    assert np.abs(out[28:36, 40:56] - original[28:36, 40:56]).mean() > 5.0


def test_add_a_controlnet_unit_preview_its_map_and_generate_with_it(page, service, tmp_path):
    control = tmp_path / "edges.png"
    gradient_image(64, 64).save(control)
    page.get_by_text("ControlNet 与图片提示").click()
    page.get_by_role("button", name="添加 ControlNet 单元").click()
    page.get_by_label("ControlNet 模型 1").select_option("tiny-edges")
    page.get_by_label("控制图片 1").set_input_files(str(control))
    page.get_by_label("预处理器 1").select_option("canny")
    page.get_by_label("单元权重 1").fill("0.8")
    page.get_by_role("button", name="预览预处理").click()
    expect(page.locator(".unit img[data-detected=true]")).to_be_visible(timeout=30_000)
    page.get_by_label("提示词", exact=True).fill("a castle")
    fill_small(page)
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#status")).to_contain_text("完成", timeout=60_000)
    with service.client() as client:
        [task] = client.get("/api/v1/tasks?limit=1").json()["tasks"]
    assert task["controlnets"] == ["tiny-edges"] and task["status"] == "completed"


def test_the_second_pass_makes_the_picture_larger(page):
    page.get_by_label("提示词", exact=True).fill("a harbour")
    fill_small(page)
    page.get_by_text("高分辨率第二遍").click()
    page.get_by_label("启用（先生成，放大后再重绘）").check()
    page.get_by_label("放大方法").select_option("lanczos")
    page.get_by_label("第二遍步数").fill("4")
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#status")).to_contain_text("完成", timeout=60_000)
    image = page.locator("#gallery figure").first.locator("img")
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [256, 192]


def test_no_request_of_a_page_load_fails_and_the_header_fits_a_phone(browser, service):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    failed = []
    page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
    page.goto(f"{service.url}/")
    page.wait_for_load_state("networkidle")
    assert failed == []
    icon = httpx.get(f"{service.url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    for language in ("English", "中文"):
        title = page.locator("header h1").bounding_box()
        switch = page.get_by_role("button", name="Language").bounding_box()
        assert abs(title["y"] - switch["y"]) < title["height"], language  # one line, not wrapped
        assert switch["x"] + switch["width"] <= 390
        page.get_by_role("button", name="Language").click()
    context.close()


def test_a_long_task_forms_in_place_and_can_be_cancelled(page):
    page.get_by_label("提示词", exact=True).fill("a very long one")
    page.get_by_label("宽度").fill("512")
    page.get_by_label("高度").fill("512")
    page.get_by_label("采样步数").fill("150")
    page.get_by_role("button", name="生成").click()
    expect(page.locator("#status")).to_contain_text(re.compile("生成中|排队中"), timeout=30_000)
    # The live preview (issue 46): the picture forming, from GET /api/v1/tasks/{id}?preview=1.
    preview = page.get_by_role("img", name="实时预览")
    expect(preview).to_be_visible(timeout=30_000)
    assert (preview.get_attribute("src") or "").startswith("data:image/jpeg;base64,")
    assert page.evaluate("document.getElementById('live-preview').naturalWidth") == 256
    page.get_by_role("button", name="取消").click()
    expect(page.locator("#status")).to_have_text("已取消", timeout=30_000)
    expect(page.get_by_role("button", name="生成")).to_be_enabled()
    expect(preview).to_be_hidden()


def test_api_errors_are_shown_in_the_apis_words(page):
    page.get_by_label("提示词", exact=True).fill("x")
    page.get_by_label("宽度").fill("100")
    page.get_by_role("button", name="生成").click()
    expect(page.get_by_role("alert")).to_contain_text("width 无效：100。必须是8的倍数")
    page.get_by_label("API Key").fill("not-a-key")
    page.get_by_label("API Key").press("Tab")
    page.get_by_label("宽度").fill("128")
    page.get_by_role("button", name="生成").click()
    expect(page.get_by_role("alert")).to_have_text("API Key 无效")


def test_english_and_a_phone_width(page, tmp_path):
    page.get_by_role("button", name="Language").click()
    expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Generate")).to_be_visible()
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_label("Prompt", exact=True).fill("a boat")
    page.get_by_label("Width").fill("128")
    page.get_by_label("Height").fill("96")
    page.get_by_label("Sampling steps").fill("2")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("Done", timeout=60_000)
    # Nothing runs off the side of a phone screen.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    page.get_by_role("button", name="Language").click()  # back to Chinese for the other tests' stored choice
