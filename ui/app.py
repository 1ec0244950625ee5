"""The dit_attn Gradio app: generate with attention controls and compare with stock at the same seed.

    dit-attn ui                      # http://127.0.0.1:7860, bound to localhost
    dit-attn ui --host 0.0.0.0       # only when you mean to expose it

The handler :func:`infer` is a plain function (tested directly, through ``gradio_client`` and in a real browser).
Nothing typed into the app is used as a file path: models are picked from the list given at launch, or typed as a
hub id (``owner/name``), never as a path.
"""

from __future__ import annotations

import random
import re

import numpy as np

MAX_SEED = int(np.iinfo(np.int32).max)
TINY_MODELS = ["tiny:sd3", "tiny:flux", "tiny:wan", "tiny:hunyuan_video", "tiny:cogvideox"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class App:
    """Pipelines cached per model; the choices offered in the model picker."""

    def __init__(self, models: list[str] | None = None):
        self.models = list(models or TINY_MODELS)
        self._pipes: dict = {}

    def pipeline(self, model: str):
        import gradio as gr

        from dit_attn.pipelines.loading import load_pipeline

        if model not in self.models and not (_HUB_ID.match(model or "") and ".." not in model):
            raise gr.Error(f"Unknown model {model!r}: pick one from the list or type a hub id like 'owner/name'.")
        if model not in self._pipes:
            try:
                pipe = load_pipeline(model)
            except Exception as e:  # no hub access, bad folder...
                raise gr.Error(f"Could not load {model!r}: {e}") from None
            pipe.set_progress_bar_config(disable=False)
            self._pipes[model] = pipe
        return self._pipes[model]

    def infer(self, model, prompt, negative_prompt, seed, randomize_seed, steps, guidance, width, height,
              entropy, train_tokens, compare, progress=None):
        """Generate; returns (image, (stock, controlled) for the slider, video path, seed used)."""
        import gradio as gr
        import torch

        import dit_attn
        from dit_attn.pipelines.loading import call_kwargs

        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error("Enter a prompt.")
        for name, value, low, high in (("Steps", steps, 1, 200), ("Width", width, 16, 2048),
                                       ("Height", height, 16, 2048), ("Train tokens", train_tokens, 2, 10**7)):
            if value is None or not low <= value <= high:
                raise gr.Error(f"{name} must be between {low} and {high}; got {value}.")
        if guidance is not None and not 0 <= guidance <= 30:
            raise gr.Error(f"Guidance must be between 0 and 30; got {guidance}.")
        if randomize_seed:
            seed = random.randint(0, MAX_SEED)
        seed = int(seed)
        pipe = self.pipeline(model)
        params = {"model": model, "prompt": prompt, "negative_prompt": negative_prompt or None,
                  "steps": int(steps), "guidance": guidance, "width": int(width), "height": int(height)}
        controls = [dit_attn.EntropyScale(train_tokens=int(train_tokens))] if entropy else []

        def run(active):
            kwargs = call_kwargs(pipe, params, torch.Generator("cpu").manual_seed(seed))
            with dit_attn.attach(pipe, *active):
                return pipe(**kwargs)

        result = run(controls)
        if hasattr(result, "frames"):
            from diffusers.utils import export_to_video

            import tempfile

            path = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False).name
            export_to_video(result.frames[0], path, fps=8)
            return None, None, path, seed
        image = result.images[0]
        slider = (run([]).images[0], image) if compare else None
        return image, slider, None, seed


def build_app(models: list[str] | None = None):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    app = App(models)
    with gr.Blocks(title="dit_attn") as demo:
        gr.Markdown("# dit_attn\nAttention controls for diffusion transformers. Same seed with and without.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", show_label=False, placeholder="Enter your prompt", scale=4,
                                value="a red circle above a blue square")
            run = gr.Button("Run", variant="primary", scale=0)
        result = gr.Image(label="Result", type="pil")
        comparison = gr.ImageSlider(label="Stock vs dit_attn", type="pil")
        video = gr.Video(label="Video")
        with gr.Accordion("Advanced Settings", open=False):
            model = gr.Dropdown(app.models, value=app.models[0], label="Model", allow_custom_value=True)
            negative = gr.Textbox(label="Negative prompt")
            seed = gr.Slider(0, MAX_SEED, value=0, step=1, label="Seed")
            randomize = gr.Checkbox(True, label="Randomize seed")
            steps = gr.Slider(1, 100, value=4, step=1, label="Steps")
            guidance = gr.Slider(0.0, 20.0, value=5.0, step=0.1, label="Guidance")
            width = gr.Slider(16, 2048, value=64, step=16, label="Width")
            height = gr.Slider(16, 2048, value=48, step=16, label="Height")
            compare = gr.Checkbox(True, label="Compare with stock (same seed)")
        with gr.Accordion("Entropy scaling", open=False):
            entropy = gr.Checkbox(False, label="Scale logits by sqrt(log N / log N_train)")
            train_tokens = gr.Number(4608, label="Training tokens per attention call", precision=0)

        def infer(model, prompt, negative, seed, randomize, steps, guidance, width, height, entropy, train_tokens,
                  compare, progress=gr.Progress(track_tqdm=True)):
            return app.infer(model, prompt, negative, seed, randomize, steps, guidance, width, height, entropy,
                             train_tokens, compare, progress)

        gr.on(triggers=[run.click, prompt.submit], fn=infer,
              inputs=[model, prompt, negative, seed, randomize, steps, guidance, width, height, entropy,
                      train_tokens, compare],
              outputs=[result, comparison, video, seed], api_name="infer", concurrency_limit=1)
    demo.queue()
    demo.dit_attn_app = app
    return demo


def launch(host: str = "127.0.0.1", port: int | None = None, models: list[str] | None = None, **kwargs):
    """Build and launch the app, bound to ``host`` (localhost unless told otherwise)."""
    demo = build_app(models)
    return demo.launch(server_name=host, server_port=port, **kwargs)
