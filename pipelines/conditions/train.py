"""Training condition adapters (peft LoRA) for FLUX-architecture models under the mode's attention masks.

One training step, with ``t = 1`` pure noise (``x_t = (1 − t)·x_0 + t·ε``, target velocity ``ε − x_0``, the
FLUX / diffusers flow-matching convention):

1. ``t`` is sampled directly as a sigma: **CSAS** ``t = sigmoid(μ + δ·z)``, ``z ~ N(0, 1)``, μ = 0.5, δ = 1.5
   (biased toward high noise), or ``logit_normal`` ``t = sigmoid(z)``. No ``scheduler.timesteps[(u·N)]`` lookup:
   those timesteps are descending, which silently flips the sign of μ (``docs/multi_condition_math.md``, section 7);
2. the condition runs its write pass with its LoRA adapter active (timestep 0, alone), the denoising forward
   runs with the condition adapters off (on, for a ``latent_lora`` adapter) and the mode's masks
   (:class:`dit_attn.MultiCondition` with ``cache=False``, so gradients flow from the loss through the cached keys
   into the adapter); KSA masks come from the same forward's logits (there is no previous step in training);
3. MSE on the velocity.

Resumable (adapter + optimizer state as safetensors + JSON in ``output_dir/checkpoint-N``, step and config in
``state.json``; a resumed run continues exactly), tqdm progress, ``accelerate launch`` for several GPUs (each
process draws its own batches). Data: ShapesWorld (:class:`dit_attn.pipelines.shapes.ShapesConditionDataset`)
or a folder with ``metadata.jsonl`` lines ``{"image": ..., "condition": ..., "caption": ..., "keyword": ...}``
(paths relative to the folder; ``keyword`` only for subject adapters).

Example (tiny offline pipeline; real runs use ``dit-attn train-conditions``)::

    >>> import tempfile
    >>> from dit_attn.pipelines.conditions.train import TrainConfig, train
    >>> from dit_attn.testing import tiny_pipeline
    >>> out = tempfile.mkdtemp()
    >>> result = train(TrainConfig(output_dir=out, steps=2, batch_size=1, size=32), pipe=tiny_pipeline("flux"))
    >>> result["step"], len(result["losses"])
    (2, 2)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass

import torch

from dit_attn.checkpoint import load_optimizer_tensors, optimizer_tensors
from dit_attn.pipelines.loading import dtype_kwargs

SAMPLINGS = ("csas", "logit_normal")
CONDITIONS = ("edge", "mask", "depth", "subject")


@dataclass
class TrainConfig:
    """Settings of :func:`train` (every field is also a ``dit-attn train-conditions`` flag)."""

    output_dir: str
    condition: str = "edge"  # ShapesWorld condition: edge, mask, depth, or subject (sprite + keyword)
    data: str = "shapes"  # "shapes" or a folder with metadata.jsonl
    mode: str = "pka"
    timestep_sampling: str = "csas"
    csas_mu: float = 0.5
    csas_delta: float = 1.5  # std of the underlying normal
    adapter_name: str = "condition"
    rank: int = 16
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    learning_rate: float = 1e-4
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    size: int = 64
    dataset_length: int = 50_000
    guidance: float = 1.0
    seed: int = 0
    save_every: int = 500
    log_every: int = 10  # steps per read of the losses (one host sync) and per losses.jsonl write
    resume: bool = True
    mixed_precision: str = "no"
    epsilon: float = 0.2
    # Encode the whole dataset (``dataset_length`` items) with the VAE once, up front, and train on the stored
    # latents: the VAE encode and the rendering are most of a step on small models. A path to a
    # ``.safetensors`` file reuses the cache across runs (it is rebuilt when the data settings differ).
    cache_latents: bool = False
    latent_cache: str = ""
    # The adapter also acts on the text and image tokens of the denoising forward (OminiControl's latent LoRA),
    # not only on the condition's write pass: for subjects whose keyword the base model does not know.
    latent_lora: bool = False
    # > 0 weighs the error on object tokens (those that differ from the image's background) 1 + object_weight
    # times, as a weighted mean (the loss keeps its scale): a subject sprite is ~10% of the tokens.
    object_weight: float = 0.0
    # Edge style augmentation (ShapesWorld edge adapters): each item is, with probability ``edge_augment``
    # (decided per dataset index, deterministically), a **hand drawing** of its scene in one of ``edge_styles``
    # (``pipelines.shapes.render.HAND_STYLES``: stroke width 1-3 px, wobble, gaps, canny-like noise, ellipses and
    # blobs in place of shapes), with the image rendered from the drawn silhouettes (so the adapter learns to
    # follow the drawing and to ignore its noise and gaps); the others keep the rendered one-pixel outlines.
    edge_augment: float = 0.0
    edge_styles: tuple[str, ...] = ("thick", "marker", "sketchy", "canny")
    # Start from a saved adapter's weights (``.safetensors`` of ``train-conditions``; same rank and targets)
    # instead of a fresh LoRA; a checkpoint in ``output_dir`` (resume) takes precedence.
    init_adapter: str = ""

    def __post_init__(self):
        if self.timestep_sampling not in SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {SAMPLINGS}, got {self.timestep_sampling!r}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        if self.mode not in ("pka", "cached-full", "concat"):
            raise ValueError(f"mode must be 'pka', 'cached-full' or 'concat', got {self.mode!r}")
        for name in ("steps", "batch_size", "grad_accum", "save_every", "log_every", "rank", "size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("steps", "save_every"):  # checkpoints and the end fall on optimizer steps, not mid-accumulation
            if getattr(self, name) % self.grad_accum:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of grad_accum ({self.grad_accum})")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if not self.object_weight >= 0:
            raise ValueError(f"object_weight must be >= 0 (0: plain loss), got {self.object_weight!r}")
        if not 0.0 <= self.edge_augment <= 1.0:
            raise ValueError(f"edge_augment must be a probability in [0, 1], got {self.edge_augment!r}")
        if self.edge_augment > 0:
            from dit_attn.pipelines.shapes.render import hand_style_names

            if self.condition != "edge" or self.data != "shapes":
                raise ValueError("edge_augment needs condition='edge' on ShapesWorld data (it redraws the scene)")
            bad = [st for st in self.edge_styles if st not in hand_style_names()] or not self.edge_styles
            if bad:
                raise ValueError(f"edge_styles must be some of {hand_style_names()}, got {self.edge_styles!r}")


def sample_sigmas(n: int, sampling: str, generator: torch.Generator, mu: float = 0.5, delta: float = 1.5):
    """Training noise levels ``t ∈ (0, 1)``, ``t = 1`` pure noise: CSAS ``sigmoid(μ + δ z)`` or ``sigmoid(z)``.

    >>> g = torch.Generator().manual_seed(0)
    >>> bool(sample_sigmas(20000, "csas", g).mean() > 0.55)  # biased toward noise (t = 1)
    True
    """
    z = torch.randn(n, generator=generator)
    if sampling == "csas":
        return torch.sigmoid(mu + delta * z)
    if sampling == "logit_normal":
        return torch.sigmoid(z)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def object_tokens(tokens: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """``[B, L, 1]`` bool: the packed latent tokens (``[B, L, C]``) of an image that hold objects, i.e. differ from
    the image's median token (its uniform background) by more than ``threshold`` per channel on average (on
    normalised ShapesWorld latents this marks ~30% of the tokens of a subject scene: the sprite and the shape).

    >>> x = torch.zeros(1, 6, 4); x[0, 2] = 0.5
    >>> object_tokens(x)[0, :, 0].tolist()
    [False, False, True, False, False, False]
    """
    median = tokens.median(dim=1, keepdim=True).values
    return (tokens - median).abs().mean(dim=-1, keepdim=True) > threshold


# --- data ---------------------------------------------------------------------------------------------------------
class FolderConditionDataset(torch.utils.data.Dataset):
    """``(image, condition, caption[, keyword])`` triples listed in ``folder/metadata.jsonl``; images are resized
    to ``size`` and returned in [-1, 1] as ``{"image", "condition", "caption", "keyword"}``."""

    def __init__(self, folder: str, size: int = 64):
        path = os.path.join(folder, "metadata.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{folder} has no metadata.jsonl (one JSON object per line with 'image', "
                                    "'condition', 'caption' and optionally 'keyword')")
        with open(path) as f:
            self.rows = [json.loads(line) for line in f if line.strip()]
        for i, row in enumerate(self.rows):
            missing = {"image", "condition", "caption"} - set(row)
            if missing:
                raise ValueError(f"{path} line {i + 1} lacks {sorted(missing)}")
        self.folder, self.size = folder, size

    def __len__(self):
        return len(self.rows)

    def _load(self, name):
        import numpy as np
        from PIL import Image

        img = Image.open(os.path.join(self.folder, name)).convert("RGB").resize((self.size, self.size))
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    def __getitem__(self, i):
        row = self.rows[i]
        return {"image": self._load(row["image"]), "condition": self._load(row["condition"]),
                "caption": row["caption"], "keyword": row.get("keyword", "")}


class _ShapesAdapter(torch.utils.data.Dataset):
    """ShapesWorld condition items as ``{"image", "condition", "caption", "keyword"}``; with ``edge_augment`` a
    fraction of the edge items are hand drawings (:func:`augmented_edge_item`)."""

    def __init__(self, condition: str, size: int, length: int, seed: int, split: str = "train",
                 edge_augment: float = 0.0, edge_styles: tuple[str, ...] = ("hand",)):
        from dit_attn.pipelines.shapes import ShapesConditionDataset

        self.condition, self.seed, self.size = condition, seed, size
        self.edge_augment, self.edge_styles = float(edge_augment), tuple(edge_styles)
        self.ds = ShapesConditionDataset(split, size=size, length=length, seed=seed,
                                         subject_prob=1.0 if condition == "subject" else 0.0)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        if self.condition == "edge" and self.edge_augment > 0:
            drawn = augmented_edge_item(self.ds.scene(i), i, self.seed, self.size, self.edge_augment,
                                        self.edge_styles)
            if drawn is not None:
                return drawn
        item = self.ds[i]
        cond = item["reference"] if self.condition == "subject" else item[self.condition]
        return {"image": item["image"], "condition": cond, "caption": item["caption"], "keyword": item["subject"]}


def augmented_edge_item(scene, index: int, seed: int, size: int, prob: float, styles: tuple[str, ...]):
    """Item ``index``'s hand-drawn version, or None when it keeps the rendered outline (probability ``1 - prob``).

    A function of ``(scene, index, seed, size, prob, styles)``: the style is drawn from ``styles``, the drawing
    is :func:`dit_attn.pipelines.shapes.render.hand_drawing`, the image
    :func:`~dit_attn.pipelines.shapes.render.render_hand_drawn_image` (the scene with the drawn silhouettes).

    >>> from dit_attn.pipelines.shapes.world import condition_scene
    >>> item = augmented_edge_item(condition_scene(0, "train", 3, 0.0), 3, 0, 64, 1.0, ("canny",))
    >>> tuple(item["condition"].shape), item["style"]
    ((3, 64, 64), 'canny')
    """
    import numpy as np

    from dit_attn.pipelines.shapes.render import grey_to_rgb, hand_drawing, render_hand_drawn_image, to_tensor_image

    rng = np.random.default_rng([int(seed), 0xED6E, int(index)])
    if not rng.random() < prob:
        return None
    style = styles[int(rng.integers(len(styles)))]
    drawing = hand_drawing(scene, size, style, int(rng.integers(2 ** 31)))
    return {"image": to_tensor_image(render_hand_drawn_image(scene, drawing)),
            "condition": to_tensor_image(grey_to_rgb(drawing.edges)), "caption": scene.caption, "keyword": "",
            "style": drawing.style}


def make_dataset(config: TrainConfig):
    if config.data == "shapes":
        return _ShapesAdapter(config.condition, config.size, config.dataset_length, config.seed,
                              edge_augment=config.edge_augment, edge_styles=config.edge_styles)
    return FolderConditionDataset(config.data, config.size)


def _collate(items):
    return {"image": torch.stack([it["image"] for it in items]),
            "condition": torch.stack([it["condition"] for it in items]),
            "caption": [it["caption"] for it in items], "keyword": [it["keyword"] for it in items]}


# --- model --------------------------------------------------------------------------------------------------------
def add_condition_adapter(transformer, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Add a peft LoRA adapter named ``config.adapter_name``; freeze everything else. Returns the trainable params."""
    from peft import LoraConfig

    from dit_attn.conditions.adapters import mark_latent_adapter

    transformer.requires_grad_(False)
    if config.adapter_name not in (getattr(transformer, "peft_config", None) or {}):
        transformer.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha,
                                           target_modules=list(config.target_modules), init_lora_weights="gaussian"),
                                adapter_name=config.adapter_name)
    mark_latent_adapter(transformer, config.adapter_name, config.latent_lora)
    params = []
    for name, p in transformer.named_parameters():
        if "lora_" in name and f".{config.adapter_name}." in name:
            p.requires_grad_(True)
            params.append(p)
    if not params:
        raise ValueError(f"no LoRA parameters for target modules {config.target_modules}")
    return params


def adapter_state_dict(transformer, name: str) -> dict:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer, adapter_name=name).items()}


def init_adapter_weights(transformer, name: str, path: str) -> None:
    """Copy the LoRA weights saved at ``path`` (a ``train-conditions`` ``.safetensors``) into adapter ``name`` of
    ``transformer``; the file must hold exactly that adapter's tensors, with the same shapes (rank, targets)."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"init_adapter: no adapter at {path}")
    saved = load_file(path)
    own = dict(get_lora_parameters(transformer, name))
    if set(saved) != set(own):
        extra, missing = sorted(set(saved) - set(own)), sorted(set(own) - set(saved))
        raise ValueError(f"init_adapter {path} does not match the adapter (rank / target modules?): "
                         f"unexpected {extra[:3]}, missing {missing[:3]}")
    with torch.no_grad():
        for key, param in own.items():
            if tuple(saved[key].shape) != tuple(param.shape):
                raise ValueError(f"init_adapter {path}: {key} has shape {tuple(saved[key].shape)}, the adapter "
                                 f"{tuple(param.shape)} (another rank?)")
            param.copy_(saved[key].to(param.device, param.dtype))


def get_lora_parameters(transformer, name: str) -> list:
    """``(key, parameter)`` of adapter ``name``, keyed as peft's saved state dict (adapter name removed)."""
    from peft.utils import get_peft_model_state_dict

    keys = set(get_peft_model_state_dict(transformer, adapter_name=name))
    out = []
    for full, p in transformer.named_parameters():
        if f".{name}." in full and "lora_" in full:
            key = full.replace(f".{name}.", ".")
            if key in keys:
                out.append((key, p))
    return out


class ConditionTrainer:
    """The training step on a FLUX pipeline's components (see the module docstring for the math)."""

    def __init__(self, pipe, config: TrainConfig, transformer=None):
        import dit_attn

        self.pipe, self.config = pipe, config
        self.transformer = transformer if transformer is not None else pipe.transformer
        self.control = dit_attn.MultiCondition(mode=config.mode, epsilon=config.epsilon, cache=False,
                                               ksa_same_forward=True)
        self.attachment = dit_attn.attach(self.transformer, self.control)

    def close(self):
        self.attachment.detach()

    @torch.no_grad()
    def _latent_tokens(self, pixels):
        from dit_attn.conditions.tokens import ConditionTokens

        vae = self.pipe.vae
        lat = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        lat = (lat - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor
        b, c, h, w = lat.shape
        return ConditionTokens(self.pipe._pack_latents(lat, b, c, h, w), (h // 2, w // 2))

    @torch.no_grad()
    def _text(self, captions):
        prompt_embeds, pooled, text_ids = self.pipe.encode_prompt(captions, None, max_sequence_length=
                                                                  self.pipe.tokenizer_2.model_max_length)
        return prompt_embeds, pooled, text_ids

    def loss(self, batch, generator: torch.Generator, model=None, t: torch.Tensor | None = None) -> torch.Tensor:
        """The flow-matching loss of one batch; ``generator`` fixes the noise and the noise levels (``t``: given
        noise levels ``[B]`` instead of sampled ones, e.g. for a validation loss at fixed levels)."""
        from dit_attn.conditions.keywords import keyword_weights
        from dit_attn.conditions.tokens import ConditionTokens, spatial_ids, subject_ids

        cfg, model = self.config, model if model is not None else self.transformer
        x0 = batch["image_latents"] if "image_latents" in batch else self._latent_tokens(batch["image"])
        cond = batch["condition_latents"] if "condition_latents" in batch else self._latent_tokens(batch["condition"])
        grid = x0.grid
        device, dtype = x0.tokens.device, x0.tokens.dtype
        b = x0.tokens.shape[0]
        if t is None:
            t = sample_sigmas(b, cfg.timestep_sampling, generator, cfg.csas_mu, cfg.csas_delta)
        t = t.to(device, dtype)
        noise = torch.randn(x0.tokens.shape, generator=generator).to(device, dtype)
        xt = (1 - t[:, None, None]) * x0.tokens + t[:, None, None] * noise
        text, pooled, text_ids = self._text(batch["caption"])
        img_ids = spatial_ids(grid, grid, device=device, dtype=dtype)
        control = self.control
        control.reset()
        if cfg.condition == "subject":
            tokens = ConditionTokens(cond.tokens, cond.grid, subject_ids(cond.grid, 0, device=device, dtype=dtype))
            control.spatial, control.subjects = [], [_subject(tokens, cfg.adapter_name)]
            rows = [keyword_weights(self.pipe.tokenizer_2, c, k, max_length=text.shape[1])
                    for c, k in zip(batch["caption"], batch["keyword"])]
            control.set_keyword_weights([torch.cat(rows)])
        else:
            tokens = ConditionTokens(cond.tokens, cond.grid, spatial_ids(cond.grid, grid, device=device, dtype=dtype))
            control.spatial, control.subjects = [_spatial(tokens, cfg.adapter_name)], []
        guidance = torch.full((b,), cfg.guidance, device=device, dtype=dtype) if \
            self.transformer.config.guidance_embeds else None
        pred = model(hidden_states=xt, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                     img_ids=img_ids, txt_ids=text_ids, guidance=guidance, return_dict=False)[0]
        err = (pred.float() - (noise - x0.tokens).float()).pow(2)
        if cfg.object_weight <= 0:
            return err.mean()
        weight = 1.0 + cfg.object_weight * object_tokens(x0.tokens).float()
        return (err * weight).sum() / (weight.sum() * err.shape[-1])


    @torch.no_grad()
    def encode_dataset(self, dataset, chunk: int = 64, progress: bool = True) -> dict:
        """Every item of ``dataset`` encoded: ``{"image", "condition"}`` packed latent tokens ``[N, L, C]``, their
        grids, ``"caption"`` and ``"keyword"`` lists (what :meth:`loss` needs instead of pixels)."""
        from tqdm.auto import tqdm

        images, conds, captions, keywords = [], [], [], []
        grids = {}
        for start in tqdm(range(0, len(dataset), chunk), desc="encode condition data", disable=not progress,
                          mininterval=10):
            batch = _collate([dataset[i] for i in range(start, min(len(dataset), start + chunk))])
            for key, out in (("image", images), ("condition", conds)):
                enc = self._latent_tokens(batch[key])
                out.append(enc.tokens.float().cpu())
                grids[key] = list(enc.grid)
            captions += batch["caption"]
            keywords += batch["keyword"]
        return {"image": torch.cat(images), "condition": torch.cat(conds), "grids": grids, "caption": captions,
                "keyword": keywords}


def _cache_key(config: TrainConfig, vae) -> dict:
    """What the cached latents depend on: a cache built with other data settings or another VAE is rebuilt."""
    vae_sum = float(sum(p.detach().double().sum() for p in vae.parameters()))
    key = {"data": config.data, "condition": config.condition, "size": config.size,
           "dataset_length": config.dataset_length, "seed": config.seed, "vae_checksum": round(vae_sum, 6),
           "vae_scaling": vae.config.scaling_factor, "vae_shift": getattr(vae.config, "shift_factor", None)}
    if config.edge_augment > 0:  # (absent otherwise: caches of earlier runs stay valid)
        from dit_attn.pipelines.shapes.render import HAND_STYLES

        presets = {name: HAND_STYLES[name] for name in HAND_STYLES if name in config.edge_styles or
                   "hand" in config.edge_styles}  # the presets' settings too: changing one rebuilds the cache
        key.update(edge_augment=config.edge_augment, edge_styles=list(config.edge_styles),
                   hand_styles=json.loads(json.dumps(presets)))
    return key


def load_or_build_latent_cache(trainer: ConditionTrainer, dataset, config: TrainConfig, progress: bool = True) -> dict:
    """The encoded dataset, from ``config.latent_cache`` (default ``output_dir/latent_cache.safetensors``) when it
    was built with the same settings, else encoded now and written there atomically."""
    from safetensors.torch import load_file, save_file

    path = config.latent_cache or os.path.join(config.output_dir, "latent_cache.safetensors")
    meta_path = path + ".json"
    key = _cache_key(config, trainer.pipe.vae)
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("key") == key:
            tensors = load_file(path)
            return {"image": tensors["image"], "condition": tensors["condition"], "grids": meta["grids"],
                    "caption": meta["caption"], "keyword": meta["keyword"]}
    cache = trainer.encode_dataset(dataset, progress=progress)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({"image": cache["image"].contiguous(), "condition": cache["condition"].contiguous()}, path + ".tmp")
    with open(meta_path + ".tmp", "w") as f:
        json.dump({"key": key, "grids": cache["grids"], "caption": cache["caption"], "keyword": cache["keyword"]}, f)
    os.replace(path + ".tmp", path)
    os.replace(meta_path + ".tmp", meta_path)
    return cache


def _cached_batch(cache: dict, ids: list[int], device, dtype) -> dict:
    from dit_attn.conditions.tokens import ConditionTokens

    index = torch.tensor(ids)
    return {"image_latents": ConditionTokens(cache["image"][index].to(device, dtype), tuple(cache["grids"]["image"])),
            "condition_latents": ConditionTokens(cache["condition"][index].to(device, dtype),
                                                 tuple(cache["grids"]["condition"])),
            "caption": [cache["caption"][i] for i in ids], "keyword": [cache["keyword"][i] for i in ids]}


def _spatial(tokens, adapter):
    from dit_attn.controls.conditions import SpatialCondition

    return SpatialCondition(tokens, adapter=adapter)


def _subject(tokens, adapter):
    from dit_attn.controls.conditions import SubjectCondition

    return SubjectCondition(tokens, "subject", adapter=adapter)


def save_adapter(model, config: TrainConfig, folder: str, trained_steps: int | None = None) -> str:
    """Write ``folder/<adapter>.safetensors`` and, beside it, ``<adapter>.json`` with the LoRA settings
    (:func:`dit_attn.conditions.adapters.load_condition_adapter` reads rank, alpha and targets from it)."""
    from safetensors.torch import save_file

    name = config.adapter_name
    path = os.path.join(folder, f"{name}.safetensors")
    save_file(adapter_state_dict(model, name), path)
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(dict(asdict(config), trained_steps=config.steps if trained_steps is None else trained_steps), f,
                  indent=1, default=str)
    return path


def save_checkpoint(accelerator, model, optimizer, config: TrainConfig, folder: str, step: int) -> None:
    """Write ``folder`` atomically (a temporary folder renamed at the end, so a killed job never leaves a half
    checkpoint): the adapter only (not the frozen base model: 24 GB for FLUX.1) with its LoRA settings
    (``<adapter>.safetensors`` + ``.json``, loadable with
    :func:`dit_attn.conditions.adapters.load_condition_adapter`) and the optimizer state as safetensors + JSON.
    Nothing is pickled; the data order and noise are functions of the step, so no RNG state is needed; the
    gradient-accumulation counter and the fp16 loss scale are kept in ``optimizer.json``.

    Example (a round trip through :func:`load_checkpoint` on a tiny FLUX-architecture transformer)::

        >>> import os, tempfile, torch
        >>> from accelerate import Accelerator
        >>> from dit_attn.pipelines.conditions.train import TrainConfig, add_condition_adapter, load_checkpoint, save_checkpoint
        >>> from dit_attn.testing import tiny_transformer
        >>> model, config = tiny_transformer("flux"), TrainConfig(output_dir="unused", rank=4)
        >>> params = add_condition_adapter(model, config)
        >>> optimizer = torch.optim.AdamW(params, lr=1e-3)
        >>> sum((p * p).sum() for p in params).backward(); optimizer.step()
        >>> folder = os.path.join(tempfile.mkdtemp(), "checkpoint-7")
        >>> save_checkpoint(Accelerator(cpu=True), model, optimizer, config, folder, step=7)
        >>> sorted(os.listdir(folder))
        ['condition.json', 'condition.safetensors', 'optimizer.json', 'optimizer.safetensors']
        >>> trained = [p.detach().clone() for p in params]
        >>> with torch.no_grad():
        ...     _ = [p.zero_() for p in params]
        >>> load_checkpoint(Accelerator(cpu=True), model, optimizer, config, folder)
        7
        >>> all(torch.equal(p, q) for p, q in zip(params, trained))
        True
    """
    from safetensors.torch import save_file

    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_adapter(model, config, tmp, trained_steps=step)
    tensors, groups = optimizer_tensors(optimizer)
    save_file(tensors, os.path.join(tmp, "optimizer.safetensors"))
    scaler = getattr(accelerator, "scaler", None)
    with open(os.path.join(tmp, "optimizer.json"), "w") as f:
        json.dump({"step": step, "accumulation_step": int(accelerator.step), "param_groups": groups,
                   "grad_scaler": scaler.state_dict() if scaler is not None else None}, f, indent=1)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_checkpoint(accelerator, model, optimizer, config: TrainConfig, folder: str) -> int:
    """Restore what :func:`save_checkpoint` wrote into ``model``'s adapter, ``optimizer`` and ``accelerator``
    (accumulation counter, fp16 loss scale); returns the step. Example: :func:`save_checkpoint`."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not os.path.isfile(os.path.join(folder, "optimizer.json")):
        raise RuntimeError(f"{folder} has no optimizer.json: it was written by an older dit_attn (accelerate "
                           "pickles), which this version does not read back; continue from its adapter with a new "
                           "output_dir, or delete the checkpoint folders to start over")
    name = config.adapter_name
    result = set_peft_model_state_dict(model, load_file(os.path.join(folder, f"{name}.safetensors")),
                                       adapter_name=name)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"checkpoint {folder} has unexpected adapter keys {result.unexpected_keys[:4]}")
    with open(os.path.join(folder, "optimizer.json")) as f:
        meta = json.load(f)
    load_optimizer_tensors(optimizer, load_file(os.path.join(folder, "optimizer.safetensors")), meta["param_groups"])
    accelerator.step = int(meta.get("accumulation_step", meta["step"]))
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    return int(meta["step"])


# --- the loop -----------------------------------------------------------------------------------------------------
def _latest_checkpoint(output_dir: str):
    if not os.path.isdir(output_dir):
        return None
    steps = [int(d.split("-")[1]) for d in os.listdir(output_dir)
             if d.startswith("checkpoint-") and d.split("-")[1].isdigit()]
    return max(steps) if steps else None


def train(config: TrainConfig, pipe=None, progress: bool = True) -> dict:
    """Train a condition adapter; returns ``{"step", "losses", "adapter"}`` (the saved adapter's path).

    ``pipe``: a FLUX-architecture pipeline (e.g. ``dit_attn.pipelines.load_shapes("flux")``); required.
    Writes ``output_dir/checkpoint-N`` (:func:`save_checkpoint`; ``resume=True`` continues from the latest),
    ``output_dir/<adapter>.safetensors``, ``losses.jsonl`` (one line per step) and ``state.json``. ``"losses"``
    holds the steps run by this call (after a resume: from the checkpoint's step on). ``resume=False`` refuses an
    ``output_dir`` that holds checkpoints (nothing is overwritten).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if pipe is None:
        raise ValueError("train() needs a FLUX-architecture pipeline (pipe=...)")
    os.makedirs(config.output_dir, exist_ok=True)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision)
    transformer = pipe.transformer
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)  # the adapter's initial weights are a function of the seed
        params = add_condition_adapter(transformer, config)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    trainer = ConditionTrainer(pipe, config, transformer)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    dataset = make_dataset(config)
    cache = load_or_build_latent_cache(trainer, dataset, config, progress) if config.cache_latents else None
    vae_param = next(pipe.vae.parameters())
    start = 0
    latest = _latest_checkpoint(config.output_dir)
    if latest is not None and not config.resume:
        raise ValueError(f"{config.output_dir} holds checkpoints of an earlier run (checkpoint-{latest}): pass "
                         "resume=True (--resume true) to continue it, or choose an empty output_dir")
    if latest is not None:
        start = load_checkpoint(accelerator, accelerator.unwrap_model(model), optimizer, config,
                                os.path.join(config.output_dir, f"checkpoint-{latest}"))
    elif config.init_adapter:
        init_adapter_weights(accelerator.unwrap_model(model), config.adapter_name, config.init_adapter)
    losses_path = os.path.join(config.output_dir, "losses.jsonl")
    if accelerator.is_main_process:  # keep the lines up to the resume point: steps after it are run again
        kept = []
        if start and os.path.exists(losses_path):
            with open(losses_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start]
        with open(losses_path, "w") as f:
            f.writelines(kept)
    losses, pending = [], []
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train-conditions",
               disable=not (progress and accelerator.is_main_process))
    try:
        for step in bar:
            # Data order and noise are functions of the step: a resumed run continues exactly.
            # Each process draws its own batches (process 0 as in a single-process run).
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step
                                                + accelerator.process_index * 1_000_000_007)
            ids = torch.randint(len(dataset), (config.batch_size,), generator=gen).tolist()
            batch = (_cached_batch(cache, ids, vae_param.device, vae_param.dtype) if cache is not None
                     else _collate([dataset[i] for i in ids]))
            with accelerator.accumulate(model):
                loss = trainer.loss(batch, gen, model)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            pending.append(loss.detach())  # read in groups below: no host sync per step
            done = step + 1
            saving = done % config.save_every == 0 or done == config.steps
            if saving or done % config.log_every == 0:
                values = torch.stack(pending).float().cpu().tolist()
                first = done - len(values)
                pending.clear()
                bad = [(first + i + 1, v) for i, v in enumerate(values) if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(f"loss is {bad[0][1]} at step {bad[0][0]}")
                losses.extend(values)
                bar.set_postfix(loss=f"{values[-1]:.4f}")
                if accelerator.is_main_process:
                    with open(losses_path, "a") as f:
                        f.writelines(json.dumps({"step": first + i + 1, "loss": v}) + "\n"
                                     for i, v in enumerate(values))
            if saving:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(accelerator, accelerator.unwrap_model(model), optimizer, config,
                                    os.path.join(config.output_dir, f"checkpoint-{done}"), done)
                    with open(os.path.join(config.output_dir, "state.json"), "w") as f:
                        json.dump({"step": done, "config": asdict(config)}, f, indent=1, default=str)
    finally:
        trainer.close()
    path = os.path.join(config.output_dir, f"{config.adapter_name}.safetensors")
    if accelerator.is_main_process:
        save_adapter(accelerator.unwrap_model(model), config, config.output_dir)
    return {"step": config.steps, "losses": losses, "adapter": path}


# --- CLI ----------------------------------------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    """Add ``train-conditions`` to an ``argparse`` subparsers object (``dit-attn train-conditions --help``)."""
    p = subparsers.add_parser("train-conditions", help="train a LoRA condition adapter (PKA masks, CSAS)")
    p.add_argument("--pipeline", default="shapes-flux",
                   help="'shapes-flux' (the bundled ShapesWorld FLUX model), 'tiny-flux' (offline test model) or a "
                        "diffusers folder of a FLUX-architecture pipeline")
    defaults = TrainConfig(output_dir="")
    for name, value in asdict(defaults).items():
        if name == "output_dir":
            p.add_argument("--output-dir", required=True)
        elif isinstance(value, bool):
            p.add_argument(f"--{name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=value)
        elif isinstance(value, tuple):
            p.add_argument(f"--{name.replace('_', '-')}", nargs="+", default=list(value))
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.set_defaults(func=_cli_main)


def _load_pipeline(name: str):
    if name == "tiny-flux":
        from dit_attn.testing import tiny_pipeline

        return tiny_pipeline("flux")
    if name == "shapes-flux":
        from dit_attn.pipelines import load_shapes

        return load_shapes("flux", adapters=False)  # train a new adapter on the base model alone
    from diffusers import DiffusionPipeline

    # float32: weights stored in half precision would otherwise train in half precision (slow and lossy on CPU).
    pipe = DiffusionPipeline.from_pretrained(name, **dtype_kwargs(torch.float32), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cli_main(args) -> int:
    fields = {k: getattr(args, k) for k in asdict(TrainConfig(output_dir="")) if hasattr(args, k)}
    fields["target_modules"] = tuple(fields["target_modules"])
    fields["edge_styles"] = tuple(fields["edge_styles"])
    fields["output_dir"] = args.output_dir
    result = train(TrainConfig(**fields), pipe=_load_pipeline(args.pipeline))
    print(json.dumps({"step": result["step"], "adapter": result["adapter"],
                      "last_loss": result["losses"][-1] if result["losses"] else None}))
    return 0
