"""The Gradio app: handler called directly, through gradio_client, and in a real browser (Playwright + chromium)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="install the test extras: pip install -e '.[test]'")

from dit_attn.ui.app import App, build_app, emphasis_preview, model_defaults, ui_controls  # noqa: E402

ARGS = dict(model="tiny:sd3", prompt="a (red:1.5) circle", negative_prompt="", seed=5, randomize_seed=False, steps=2,
            guidance=5.0, width=64, height=48, compare=True)
CONTROLS = {"entropy": {"train_tokens": 64}, "emphasis": {}}


def test_infer_direct():
    image, slider, video, seed = App().infer(**ARGS, controls=CONTROLS)
    assert seed == 5 and video is None
    assert image.size == (512, 384) and slider[1] is image and slider[0].size == image.size  # shown x8
    assert np.abs(np.asarray(slider[0], float) - np.asarray(image, float)).max() > 0  # the controls acted


def test_stock_side_is_stock_with_the_clean_prompt():
    """The comparison's stock picture is the pipeline alone, every control off, on the prompt without syntax."""
    import torch

    from dit_attn.pipelines.loading import call_kwargs
    from dit_attn.ui.app import enlarged

    app = App()
    _, slider, _, _ = app.infer(**{**ARGS, "prompt": "a (red:0) circle", "negative_prompt": "(blurry:2)"},
                                controls=CONTROLS)
    pipe = app.pipeline("tiny:sd3")
    params = {"model": "tiny:sd3", "prompt": "a red circle", "negative_prompt": "blurry", "steps": 2,
              "guidance": 5.0, "width": 64, "height": 48}
    plain = pipe(**call_kwargs(pipe, params, torch.Generator("cpu").manual_seed(5))).images[0]
    assert np.array_equal(np.asarray(slider[0]), np.asarray(enlarged(plain)))


def test_left_out_settings_take_the_model_defaults():
    app = App()
    full = app.infer(**{**ARGS, "steps": 2, "guidance": 5.0, "width": 64, "height": 48, "compare": False})
    defaults = app.infer(**{**ARGS, "steps": None, "guidance": None, "width": None, "height": None,
                            "compare": False})
    assert np.array_equal(np.asarray(full[0]), np.asarray(defaults[0]))  # tiny:sd3's defaults are these


def test_typed_text_is_never_read_as_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("owner/name")  # looks like a hub id, exists as a folder
    with pytest.raises(gr.Error, match="never read as a local path"):
        App(models=["tiny:sd3"]).pipeline("owner/name")


def test_videos_live_in_the_apps_own_folder_and_are_cleaned_up():
    from dit_attn.ui.app import KEEP_VIDEOS

    app = App(models=["tiny:wan"])
    paths = []
    for seed in range(KEEP_VIDEOS + 1):
        _, _, video, _ = app.infer(**{**ARGS, "model": "tiny:wan", "seed": seed, "compare": False, "steps": 1})
        paths.append(video)
    assert all(os.path.dirname(p) == app.workdir for p in paths)
    assert not os.path.exists(paths[0]) and os.path.exists(paths[-1])
    assert len([f for f in os.listdir(app.workdir) if f.endswith(".mp4")]) == KEEP_VIDEOS
    app.close()
    assert not os.path.exists(app.workdir)


def test_randomized_seed_is_returned():
    _, _, _, seed = App().infer(**{**ARGS, "randomize_seed": True, "compare": False})
    assert isinstance(seed, int) and 0 <= seed


@pytest.mark.parametrize("change, message", [
    ({"prompt": "  "}, "Enter a prompt"),
    ({"steps": 0}, "Steps must be between"),
    ({"model": "../../etc/passwd"}, "Unknown model"),
    ({"model": "/tmp"}, "Unknown model"),
    ({"prompt": "a (red:20000) circle"}, "Prompt:.*allowed"),
])
def test_invalid_input_gives_clear_error(change, message):
    with pytest.raises(gr.Error, match=message):
        App().infer(**{**ARGS, **change})


def test_bad_control_fields_give_clear_errors():
    with pytest.raises(gr.Error, match="Train tokens must be between"):
        ui_controls(entropy=True, train_tokens=1)
    with pytest.raises(gr.Error, match="has no field"):
        App().infer(**ARGS, controls={"entropy": {"nope": 1}})
    assert ui_controls(emphasis=True, entropy=True, train_tokens=64) == {
        "emphasis": {"mode": "attention", "queries": "image"}, "entropy": {"train_tokens": 64}}


def test_model_defaults():
    assert model_defaults("tiny:sd3") == {"steps": 2, "guidance": 5.0, "width": 64, "height": 48}
    assert model_defaults("tiny:flux")["guidance"] == 3.5  # FLUX: the distilled guidance embedding
    assert model_defaults("owner/unknown") == {} and model_defaults("tiny:nope") == {}


def test_emphasis_preview():
    assert "`red` × 1.5" in emphasis_preview("a (red:1.5) circle")
    assert "`red circle` × 1.1" in emphasis_preview("a (red circle")  # A1111 closes brackets at the end
    assert "⚠️" in emphasis_preview("a (red:20000) circle")
    assert "Note:" in emphasis_preview("a red circle AND a blue square")
    assert "No weighted words" in emphasis_preview("a red circle")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield url
    demo.close()


def test_gradio_client_generate_and_error(served):
    from gradio_client import Client

    client = Client(served, verbose=False)
    fields = {k: v for k, v in ARGS.items() if k not in ("negative_prompt", "randomize_seed")}
    fields.update(negative="", randomize=False, entropy=True, train_tokens=64, spatial_1=None, spatial_2=None,
                  subject=None)  # image inputs have no API default
    image, slider, video, seed = client.predict(**fields, api_name="/infer")
    assert seed == 5 and os.path.exists(image if isinstance(image, str) else image["path"])
    assert slider is not None
    with pytest.raises(Exception, match="Enter a prompt"):
        client.predict(**{**fields, "prompt": ""}, api_name="/infer")
    # /generate: only the prompt is required; everything else takes the model's defaults.
    params = client.view_api(return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    assert [p["parameter_name"] for p in params if not p["parameter_has_default"]] == ["prompt"]
    output, stock, seed = client.predict("a red circle", api_name="/generate")
    assert seed == 0 and stock is None and os.path.getsize(output) > 0
    output, stock, _ = client.predict("a (red:2) circle", model="tiny:sd3", controls={"emphasis": {}},
                                      compare=True, api_name="/generate")
    assert os.path.getsize(stock) > 0 and os.path.getsize(output) > 0
    client.close()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium: apt-get install chromium")
def test_real_browser_generates_and_screenshots(served, tmp_path):
    from playwright.sync_api import sync_playwright

    shot = os.environ.get("DIT_ATTN_UI_SCREENSHOT") or str(tmp_path / "ui.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 900, "height": 1100})
        page.goto(served)
        page.get_by_role("button", name="Run").click()
        # the generated image is served from gradio's file route once the event has finished
        generated = page.locator("img[src*='file']").first
        generated.wait_for(timeout=120000)
        page.get_by_test_id("status-tracker").first.wait_for(state="hidden", timeout=120000)
        natural_width = generated.evaluate("img => img.naturalWidth")
        page.screenshot(path=shot, full_page=True)
        browser.close()
    assert natural_width == 512  # the 64-pixel output, shown x8
    assert os.path.getsize(shot) > 10000


def test_head_guidance_and_sparse_from_the_accordions(tmp_path):
    import json

    from dit_attn.ui.app import _preset_spec, load_head_file

    app = App()
    stock, _, _, _ = app.infer(**{**ARGS, "compare": False})
    pag = ui_controls(pag=True, pag_heads="transformer_blocks.0:0", pag_strength=1.0, pag_scale=3.0)
    assert pag["softpag"]["heads"] == "transformer_blocks.0:0"
    guided, _, _, _ = app.infer(**{**ARGS, "compare": False}, controls=pag)
    assert np.abs(np.asarray(guided, float) - np.asarray(stock, float)).max() > 0
    sparse, _, _, _ = app.infer(**{**ARGS, "compare": False}, controls=ui_controls(sparse=True, sparsity=0.5))
    assert sparse.size == stock.size
    with pytest.raises(gr.Error, match="no block 7"):
        app.infer(**ARGS, controls=ui_controls(pag=True, pag_heads="transformer_blocks.7:0"))
    with pytest.raises(gr.Error, match="head spec"):
        ui_controls(pag=True, pag_heads=" ")
    with pytest.raises(gr.Error, match="step window"):
        ui_controls(pag=True, pag_heads="transformer_blocks.0:0", pag_start=0.5, pag_stop=0.2)
    assert _preset_spec("sd3-medium/red") == "transformer_blocks.0:3"

    result = {"format": "dit_attn.heads/1", "layers": [{"block_list": "transformer_blocks", "block": 1, "heads": [0]}],
              "scores": {"transformer_blocks.0:0": 0.2, "transformer_blocks.0:1": 0.4, "transformer_blocks.1:0": 0.9}}
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(result))
    spec, heatmap = load_head_file(str(path))
    assert spec == "transformer_blocks.1:0" and heatmap.size[0] > 100
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(gr.Error, match="Head-set file"):
        load_head_file(str(tmp_path / "bad.json"))


def test_multi_condition_accordion_on_tiny_flux():
    from PIL import Image

    from dit_attn.ui.app import ui_conditions

    rng = np.random.default_rng(0)
    edges = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    sprite = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    flux = {**ARGS, "model": "tiny:flux", "prompt": "a red circle above a blue square", "compare": True}
    conditions = ui_conditions(True, edges, None, sprite, "circle")
    image, slider, _, _ = App().infer(**flux, conditions=conditions)
    assert np.abs(np.asarray(slider[0], float) - np.asarray(image, float)).max() > 0
    assert ui_conditions(False, edges) == []
    with pytest.raises(gr.Error, match="needs its keyword"):
        ui_conditions(True, None, None, sprite, "")
    with pytest.raises(gr.Error, match="upload a spatial condition"):
        ui_conditions(True)
    with pytest.raises(gr.Error, match="Generation failed"):  # keyword absent from the prompt
        App().infer(**flux, conditions=ui_conditions(True, None, None, sprite, "zorb"))
    with pytest.raises(gr.Error, match="Generation failed"):  # not a FLUX-architecture model
        App().infer(**ARGS, conditions=ui_conditions(True, edges))
    named = ui_conditions(True, edges, None, sprite, "circle", spatial_adapter=" edges ", subject_adapter="")
    assert named[0].spatial[0].adapter == "edges" and named[0].subjects[0].adapter is None
    with pytest.raises(gr.Error, match="not loaded"):  # an adapter name the model does not have
        App().infer(**flux, conditions=named)
