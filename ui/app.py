"""The dit_attn Gradio app: generate with attention controls and compare with stock at the same seed.

    dit-attn ui                      # http://127.0.0.1:7860, bound to localhost
    dit-attn ui --host 0.0.0.0       # only when you mean to expose it

The handler :meth:`App.infer` is a plain function (tested directly, through ``gradio_client`` and in a real
browser). Each accordion of the page fills one entry of a controls config (``{"emphasis": {...}, "softpag":
{...}}``), turned into control objects by :func:`dit_attn.controls_from_config`, the same path the CLI and the
batch jobs take. Accordions of controls that are not in this build are not shown.

Nothing typed into the app is used as a file path: models are picked from the list given at launch, or typed as a
hub id (``owner/name``) that is not also a local path; uploaded files (head sets) are read from Gradio's upload
folder only. Files the app writes (videos) go to one temporary folder per app, removed at exit, and only the last
few are kept; Gradio's own cache of served files is cleared hourly.

"Stock" in the comparison is the same model, seed and settings with every control off and the prompt without
emphasis syntax: what diffusers alone would give for the prompt as the encoders see it.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shutil
import tempfile

import numpy as np

MAX_SEED = int(np.iinfo(np.int32).max)
TINY_MODELS = ["tiny:sd3", "tiny:flux", "tiny:wan", "tiny:hunyuan_video", "tiny:cogvideox"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
VIDEO_FPS = 8
DISPLAY_SIZE = 512  # small outputs are shown enlarged (nearest neighbour) to at least this many pixels
KEEP_VIDEOS = 4  # videos kept in the app's temporary folder
# A prompt the bundled t2i model draws right at seed 0 (both objects, colours and shapes, by the evaluator).
DEFAULT_PROMPT = "a purple circle and a green triangle"


def enlarged(image):
    """``image`` (PIL) scaled up by an integer factor (nearest neighbour) to at least ``DISPLAY_SIZE`` pixels on its
    longer side, for display: a 64-pixel output is otherwise a thumbnail."""
    if image is None:
        return None
    factor = max(1, DISPLAY_SIZE // max(image.size))
    if factor == 1:
        return image
    from PIL import Image

    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def default_models() -> list[str]:
    """The bundled ShapesWorld models that are installed (first), then the tiny offline ones."""
    from dit_attn.pipelines import shapes_models

    return [f"shapes:{kind}" for kind in shapes_models()] + list(TINY_MODELS)


def emphasis_preview(prompt: str) -> str:
    """Markdown listing the weighted fragments of ``prompt`` as A1111 reads them, with any warning (unsupported
    syntax such as ``AND``) or the error (an out-of-range weight), for the live preview."""
    import warnings

    from dit_attn.prompt import PromptSyntaxError, PromptSyntaxWarning, parse_emphasis

    if not prompt:
        return ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PromptSyntaxWarning)
            parsed = parse_emphasis(prompt)
    except PromptSyntaxError as e:
        return f"⚠️ {e}"
    notes = "".join(f"\n\nNote: {w.message}" for w in caught if issubclass(w.category, PromptSyntaxWarning))
    if not parsed.spans:
        return "No weighted words (write `(word:1.5)`, `(word)` = ×1.1, `[word]` = ÷1.1)." + notes
    parts = [f"`{parsed.text[s.start:s.end]}` × {s.weight:.3g}" for s in parsed.spans]
    return "Weights: " + ", ".join(parts) + notes


def model_defaults(model: str) -> dict:
    """Default steps / guidance / size of a model of the picker (``{}`` when unknown: fields are left alone), plus
    the bundled flux model's condition adapters."""
    from dit_attn.pipelines.loading import model_defaults as defaults

    found = defaults(model)
    if model == "shapes:flux" and found:  # the bundled condition adapters (load_shapes loads them)
        found.update(spatial_adapter="edges", subject_adapter="subject")
    return found


class App:
    """Pipelines cached per model; the choices offered in the model picker."""

    def __init__(self, models: list[str] | None = None):
        self.models = list(models or default_models())
        self._pipes: dict = {}
        self.workdir = tempfile.mkdtemp(prefix="dit_attn_ui_")
        self._last_image = self._last_stock = None
        atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)

    def close(self) -> None:
        """Remove the app's temporary folder (also done at exit)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _new_file(self, suffix: str = ".mp4") -> str:
        """A new file in the app's folder, after removing all but the newest ``KEEP_VIDEOS - 1`` files of that
        kind (Gradio has copied older ones into its own cache, which it clears itself)."""
        os.makedirs(self.workdir, exist_ok=True)
        old = sorted((os.path.join(self.workdir, f) for f in os.listdir(self.workdir) if f.endswith(suffix)),
                     key=os.path.getmtime)
        for path in old[: max(0, len(old) - (KEEP_VIDEOS - 1))]:
            os.remove(path)
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.workdir)
        os.close(fd)
        return path

    def generate(self, prompt: str, model: str | None = None, negative_prompt: str = "", seed: int = 0,
                 steps: int | None = None, guidance: float | None = None, width: int | None = None,
                 height: int | None = None, controls: dict | None = None, compare: bool = False):
        """The API endpoint ``/generate``: only ``prompt`` is required; settings left out take the model's
        defaults; ``controls`` is a controls config (as in job files). Returns (output file: PNG or MP4, stock
        PNG or None, seed), files at the output's own size."""
        from gradio.data_classes import FileData

        model = model or self.models[0]
        shown, slider, video, seed = self.infer(model, prompt, negative_prompt, seed, False, steps, guidance, width,
                                                height, compare, controls)
        if video is not None:
            return FileData(path=video), None, seed
        files = []
        for image in (self._last_image, self._last_stock if compare else None):
            if image is None:
                files.append(None)
                continue
            path = self._new_file(".png")
            image.save(path)
            files.append(FileData(path=path))
        return files[0], files[1], seed

    def pipeline(self, model: str):
        import gradio as gr

        from dit_attn.pipelines.loading import load_pipeline

        typed_hub_id = bool(_HUB_ID.match(model or "")) and ".." not in model and not os.path.exists(model)
        if model not in self.models and not typed_hub_id:
            raise gr.Error(f"Unknown model {model!r}: pick one from the list or type a hub id like 'owner/name' "
                           "(typed text is never read as a local path).")
        if model not in self._pipes:
            try:
                pipe = load_pipeline(model)
            except Exception as e:  # no hub access, bad folder...
                raise gr.Error(f"Could not load {model!r}: {e}") from None
            pipe.set_progress_bar_config(disable=False)
            self._pipes[model] = pipe
        return self._pipes[model]

    def infer(self, model, prompt, negative_prompt, seed, randomize_seed, steps, guidance, width, height, compare,
              controls: dict | None = None, progress=None, conditions: list | None = None):
        """Generate; returns (image, (stock, controlled) for the slider, video path, seed used).

        ``controls`` is a controls config (``{"entropy": {"train_tokens": 4608}}``); bad fields give a
        ``gr.Error`` naming them. ``conditions`` are extra control objects that a config cannot hold (images:
        :class:`dit_attn.MultiCondition`, see :func:`ui_conditions`).
        """
        import gradio as gr
        import torch

        import dit_attn
        from dit_attn.pipelines.loading import call_kwargs
        from dit_attn.prompt import PromptSyntaxError, parse_emphasis

        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error("Enter a prompt.")
        # Settings left out (the API's optional inputs) take the model's own defaults.
        defaults = model_defaults(model or "")
        steps = defaults.get("steps", 20) if steps is None else steps
        guidance = defaults.get("guidance") if guidance is None else guidance
        width = defaults.get("width", 64) if width is None else width
        height = defaults.get("height", 64) if height is None else height
        for name, value, low, high in (("Steps", steps, 1, 200), ("Width", width, 16, 2048),
                                       ("Height", height, 16, 2048)):
            if value is None or not low <= value <= high:
                raise gr.Error(f"{name} must be between {low} and {high}; got {value}.")
        if guidance is not None and not 0 <= guidance <= 30:
            raise gr.Error(f"Guidance must be between 0 and 30; got {guidance}.")
        controls = dict(controls or {})
        if "emphasis" in controls or "emphasis" in dit_attn.available_controls():
            for label, text in (("Prompt", prompt), ("Negative prompt", negative_prompt or "")):
                try:
                    parse_emphasis(text)
                except PromptSyntaxError as e:
                    raise gr.Error(f"{label}: {e}") from None
        from dit_attn.prompt import strip_emphasis

        clean_prompt, clean_negative = strip_emphasis(prompt), strip_emphasis(negative_prompt or "")
        if "emphasis" not in controls:
            prompt, negative_prompt = clean_prompt, clean_negative
        try:
            active = dit_attn.controls_from_config(controls)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        # Condition attention first; controls that reorder tokens (sparse) stay last.
        active = list(conditions or []) + active
        if randomize_seed:
            seed = random.randint(0, MAX_SEED)
        seed = int(seed)
        pipe = self.pipeline(model)
        params = {"model": model, "prompt": prompt, "negative_prompt": negative_prompt or None,
                  "steps": int(steps), "guidance": guidance, "width": int(width), "height": int(height)}
        # Stock: the same settings, every control off, and the prompt as the text encoders see it.
        stock_params = dict(params, prompt=clean_prompt, negative_prompt=clean_negative or None)

        def run(with_controls, params=params):
            kwargs = call_kwargs(pipe, params, torch.Generator("cpu").manual_seed(seed))
            try:
                with dit_attn.attach(pipe, *with_controls):
                    return pipe(**kwargs)
            except (ValueError, RuntimeError) as e:
                raise gr.Error(f"Generation failed: {e}") from None

        result = run(active)
        if hasattr(result, "frames"):
            from diffusers.utils import export_to_video

            path = self._new_file(".mp4")
            export_to_video(result.frames[0], path, fps=VIDEO_FPS)
            return None, None, path, seed
        image = result.images[0]
        stock = run([], stock_params) if compare else None
        self._last_image, self._last_stock = image, stock.images[0] if compare else None
        shown = enlarged(image)
        slider = (enlarged(stock.images[0]), shown) if compare else None
        return shown, slider, None, seed


def ui_controls(emphasis=False, emphasis_mode="attention", emphasis_queries="image", entropy=False,
                train_tokens=4608, pag=False, pag_heads="", pag_strength=1.0, pag_scale=3.0,
                pag_scope="all", pag_start=0.0, pag_stop=1.0, pag_mode="batched", sparse=False, sparsity=0.8,
                sparse_tau=0.3) -> dict:
    """The controls config from the accordions' fields (a plain function, tested directly)."""
    import gradio as gr

    config: dict = {}
    if emphasis:
        config["emphasis"] = {"mode": emphasis_mode, "queries": emphasis_queries}
    if entropy:
        if train_tokens is None or not 2 <= train_tokens <= 10**7:
            raise gr.Error(f"Train tokens must be between 2 and 10000000; got {train_tokens}.")
        config["entropy"] = {"train_tokens": int(train_tokens)}
    if pag:
        heads = (pag_heads or "").strip()
        if not heads:
            raise gr.Error("Head guidance: give a head spec (e.g. 'transformer_blocks.1:0,1'), a preset or a "
                           "head-set JSON file.")
        if not 0 <= pag_start < pag_stop <= 1:
            raise gr.Error(f"Head guidance: the step window must satisfy 0 <= start < stop <= 1; got "
                           f"({pag_start}, {pag_stop}).")
        config["softpag"] = {"heads": heads, "strength": float(pag_strength), "scale": float(pag_scale),
                             "scope": pag_scope, "steps": [float(pag_start), float(pag_stop)], "mode": pag_mode}
    if sparse:
        config["sparse"] = {"sparsity": float(sparsity), "tau": float(sparse_tau)}
    return config


def ui_conditions(enabled=False, spatial_1=None, spatial_2=None, subject=None, keyword="", mode="pka",
                  epsilon=0.2, spatial_adapter="", subject_adapter="") -> list:
    """The multi-condition control from the accordion's uploads (FLUX-architecture models), or [].

    ``spatial_adapter`` / ``subject_adapter``: names of LoRA condition adapters loaded on the transformer (the
    bundled ShapesWorld flux model has ``"edges"`` and ``"subject"``); empty: the condition runs without one.
    """
    import gradio as gr

    if not enabled:
        return []
    import dit_attn

    spatial_adapter = (spatial_adapter or "").strip() or None
    subject_adapter = (subject_adapter or "").strip() or None
    spatial = [dit_attn.SpatialCondition(im.convert("RGB"), adapter=spatial_adapter)
               for im in (spatial_1, spatial_2) if im is not None]
    keyword = (keyword or "").strip()
    if subject is not None and not keyword:
        raise gr.Error("Multi-condition: a subject image needs its keyword (a word of the prompt, e.g. 'zorb').")
    if keyword and subject is None:
        raise gr.Error(f"Multi-condition: keyword {keyword!r} given without a subject image.")
    subjects = ([dit_attn.SubjectCondition(subject.convert("RGB"), keyword, adapter=subject_adapter)]
                if subject is not None else [])
    if not spatial and not subjects:
        raise gr.Error("Multi-condition: upload a spatial condition (edge, depth, mask...) or a subject image.")
    try:
        return [dit_attn.MultiCondition(spatial=spatial, subjects=subjects, mode=mode, epsilon=float(epsilon))]
    except (ValueError, TypeError) as e:
        raise gr.Error(f"Multi-condition: {e}") from None


def _read_head_file(upload) -> str:
    """The head-set JSON text of an uploaded file (Gradio's upload folder only; never unpickled)."""
    import gradio as gr

    path = upload if isinstance(upload, str) else getattr(upload, "name", None)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1_000_000)
        json.loads(text)
    except (OSError, TypeError, ValueError) as e:
        raise gr.Error(f"Head-set file: expected a JSON file saved by dit_attn.HeadSet; {e}") from None
    return text


def load_head_file(upload):
    """(head spec text, heatmap image or None) from an uploaded head-set or head-search result JSON."""
    import gradio as gr

    if not upload:
        return gr.update(), None
    data = json.loads(_read_head_file(upload))
    from dit_attn.heads import HeadSet

    try:
        heads = HeadSet.from_dict(data)
    except (ValueError, KeyError, TypeError) as e:
        raise gr.Error(f"Head-set file: {e}") from None
    image = None
    if isinstance(data, dict) and data.get("scores"):
        from dit_attn.head_search import heatmap_image

        try:
            image = heatmap_image(data)
        except ValueError as e:
            raise gr.Error(f"Head-search file: {e}") from None
    return heads.to_spec(), image


def build_app(models: list[str] | None = None):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr
    from gradio.data_classes import FileData

    import dit_attn

    app = App(models)
    available = dit_attn.available_controls()
    first = model_defaults(app.models[0]) if app.models else {}
    with gr.Blocks(title="dit_attn", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# dit_attn\nAttention controls for diffusion transformers. Same seed with and without.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", show_label=False, placeholder="Enter your prompt", scale=4,
                                value=DEFAULT_PROMPT,
                                info="Emphasis: (word:1.5), (word) = ×1.1, [word] = ÷1.1")
            run = gr.Button("Run", variant="primary", scale=0)
        preview = gr.Markdown("")
        result = gr.Image(label="Result (small outputs shown enlarged)", type="pil", height=DISPLAY_SIZE)
        comparison = gr.ImageSlider(label="Stock (no controls, clean prompt) vs dit_attn", type="pil",
                                    height=DISPLAY_SIZE)
        video = gr.Video(label="Video")
        with gr.Accordion("Advanced Settings", open=False):
            model = gr.Dropdown(app.models, value=app.models[0], label="Model", allow_custom_value=True)
            negative = gr.Textbox("", label="Negative prompt")
            seed = gr.Slider(0, MAX_SEED, value=0, step=1, label="Seed")
            randomize = gr.Checkbox(False, label="Randomize seed")
            steps = gr.Slider(1, 100, value=first.get("steps") or 20, step=1, label="Steps")
            guidance = gr.Slider(0.0, 20.0, value=first.get("guidance") or 5.0, step=0.1, label="Guidance")
            width = gr.Slider(16, 2048, value=first.get("width") or 64, step=16, label="Width")
            height = gr.Slider(16, 2048, value=first.get("height") or 64, step=16, label="Height")
            compare = gr.Checkbox(True, label="Compare with stock (same seed)")
        with gr.Accordion("Prompt emphasis", open=False, visible="emphasis" in available):
            emphasis = gr.Checkbox(True, label="Apply (word:w) weights in the attention logits")
            emphasis_mode = gr.Radio(["attention", "embedding-a1111", "embedding-comfy"], value="attention",
                                     label="Mode")
            emphasis_queries = gr.Radio(["image", "all"], value="image", label="Query rows that get the bias")
        with gr.Accordion("Entropy scaling", open=False):
            entropy = gr.Checkbox(False, label="Scale logits by sqrt(log N / log N_train)")
            train_tokens = gr.Number(4608, label="Training tokens per attention call", precision=0)
        with gr.Accordion("Head guidance (SoftPAG / HeadHunter)", open=False, visible="softpag" in available):
            pag = gr.Checkbox(False, label="Perturbation guidance on chosen heads")
            presets = _preset_names() if "softpag" in available else []
            pag_preset = gr.Dropdown([""] + presets, value="", label="Preset (fills the head spec)")
            pag_heads = gr.Textbox("", label="Heads", placeholder="transformer_blocks.1:0,1; transformer_blocks.2:*")
            pag_file = gr.File(None, label="Head-set or search-result JSON", file_types=[".json"], type="filepath")
            heatmap = gr.Image(label="Per-head scores of a loaded search result", type="pil", visible=True)
            pag_strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength u (0 = off, 1 = PAG)")
            pag_scale = gr.Slider(0.0, 10.0, value=3.0, step=0.1, label="Guidance scale s")
            pag_scope = gr.Radio(["all", "image"], value="all", label="Identity scope")
            pag_start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Start (fraction of steps)")
            pag_stop = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Stop (fraction of steps)")
            pag_mode = gr.Radio(["batched", "uncond"], value="batched", label="Mode")
            pag_preset.change(_preset_spec, inputs=pag_preset, outputs=pag_heads)
            pag_file.change(load_head_file, inputs=pag_file, outputs=[pag_heads, heatmap])
        with gr.Accordion("Rectified sparse attention", open=False, visible="sparse" in available):
            sparse = gr.Checkbox(False, label="Block-sparse attention with rectification")
            sparsity = gr.Slider(0.0, 0.95, value=0.8, step=0.05, label="Sparsity")
            sparse_tau = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="tau (cumulative mass)")

        with gr.Accordion("Multi-condition (FLUX-architecture models)", open=False,
                          visible=hasattr(dit_attn, "MultiCondition")):
            cond = gr.Checkbox(False, label="Condition on the uploads (position-aligned and keyword-scoped)")
            with gr.Row():
                spatial_1 = gr.Image(None, label="Spatial condition 1 (edges, depth, mask...)", type="pil")
                spatial_2 = gr.Image(None, label="Spatial condition 2", type="pil")
                subject = gr.Image(None, label="Subject reference", type="pil")
            keyword = gr.Textbox("", label="Subject keyword (must appear in the prompt)")
            cond_mode = gr.Radio(["pka", "cached-full", "concat"], value="pka", label="Mode")
            epsilon = gr.Slider(0.0, 1.0, value=0.2, step=0.05, label="Keyword mask threshold epsilon")
            with gr.Row():
                spatial_adapter = gr.Textbox("", label="Spatial condition adapter (LoRA name; empty: none)")
                subject_adapter = gr.Textbox("", label="Subject adapter (LoRA name; empty: none)")

        prompt.change(emphasis_preview, inputs=prompt, outputs=preview)

        def on_model(name):
            found = model_defaults(name or "")
            fields = tuple(gr.update(value=found[k]) if found.get(k) is not None else gr.update()
                           for k in ("steps", "guidance", "width", "height"))
            # Adapter names belong to a model: cleared when the new model names none.
            return fields + (gr.update(value=found.get("spatial_adapter", "")),
                             gr.update(value=found.get("subject_adapter", "")))

        defaults_out = [steps, guidance, width, height, spatial_adapter, subject_adapter]
        model.change(on_model, inputs=model, outputs=defaults_out)
        demo.load(on_model, inputs=model, outputs=defaults_out)

        def infer(model, prompt, negative, seed, randomize, steps, guidance, width, height, compare, emphasis,
                  emphasis_mode, emphasis_queries, entropy, train_tokens, pag, pag_heads, pag_strength,
                  pag_scale, pag_scope, pag_start, pag_stop, pag_mode, sparse, sparsity, sparse_tau, cond,
                  spatial_1, spatial_2, subject, keyword, cond_mode, epsilon, spatial_adapter, subject_adapter,
                  progress=gr.Progress(track_tqdm=True)):
            controls = ui_controls(emphasis, emphasis_mode, emphasis_queries, entropy, train_tokens, pag,
                                   pag_heads, pag_strength, pag_scale, pag_scope, pag_start, pag_stop,
                                   pag_mode, sparse, sparsity, sparse_tau)
            conditions = ui_conditions(cond, spatial_1, spatial_2, subject, keyword, cond_mode, epsilon,
                                       spatial_adapter, subject_adapter)
            return app.infer(model, prompt, negative, seed, randomize, steps, guidance, width, height, compare,
                             controls, progress, conditions)

        gr.on(triggers=[run.click, prompt.submit], fn=infer,
              inputs=[model, prompt, negative, seed, randomize, steps, guidance, width, height, compare, emphasis,
                      emphasis_mode, emphasis_queries, entropy, train_tokens, pag, pag_heads, pag_strength,
                      pag_scale, pag_scope, pag_start, pag_stop, pag_mode, sparse, sparsity, sparse_tau, cond,
                      spatial_1, spatial_2, subject, keyword, cond_mode, epsilon, spatial_adapter, subject_adapter],
              outputs=[result, comparison, video, seed], api_name="infer", concurrency_limit=1,
              concurrency_id="gpu_queue")

        def generate(prompt: str, model: str = app.models[0] if app.models else "tiny:sd3",
                     negative_prompt: str = "", seed: int = 0, steps: int | None = None,
                     guidance: float | None = None, width: int | None = None, height: int | None = None,
                     controls: dict | None = None, compare: bool = False) -> tuple[FileData, FileData | None, int]:
            return app.generate(prompt, model, negative_prompt, seed, steps, guidance, width, height, controls,
                                compare)

        # This module postpones annotations (strings); gr.api reads real types.
        generate.__annotations__ = {"prompt": str, "model": str, "negative_prompt": str, "seed": int,
                                    "steps": int | None, "guidance": float | None, "width": int | None,
                                    "height": int | None, "controls": dict | None, "compare": bool,
                                    "return": tuple[FileData, FileData | None, int]}
        gr.api(generate, api_name="generate", concurrency_limit=1, concurrency_id="gpu_queue")
    demo.queue()
    demo.dit_attn_app = app
    return demo


def _preset_names() -> list[str]:
    from dit_attn.heads import PRESETS

    return sorted(PRESETS)


def _preset_spec(name: str) -> str:
    if not name:
        return ""
    from dit_attn.heads import PRESETS

    return PRESETS[name][0]  # (spec, source)


def launch(host: str = "127.0.0.1", port: int | None = None, models: list[str] | None = None, **kwargs):
    """Build and launch the app, bound to ``host`` (localhost unless told otherwise)."""
    from dit_attn.pipelines.loading import quiet_loading

    quiet_loading()  # third-party deprecation notices and loading bars: not the user's to act on
    demo = build_app(models)
    return demo.launch(server_name=host, server_port=port, **kwargs)
