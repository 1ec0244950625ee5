"""Train a ShapesWorld model: ``python -m dit_attn.pipelines.shapes.train --kind t2i|flux|t2v --out DIR``.

Phases (each resumable, all under one wall-clock budget ``--minutes``):

1. **VAE** (``--vae-minutes``): the pipeline's VAE (``AutoencoderKL`` for t2i/flux, ``AutoencoderKLWan`` for
   t2v) is trained as an autoencoder on fresh ShapesWorld renders (L2 + L1 reconstruction, a tiny KL term).
   ``--init-vae FOLDER`` starts from a trained VAE of the same class instead (flux reuses the t2i VAE this way;
   the VAE phase can then be skipped with ``--vae-minutes 0``). ``--vae-decoder-only`` trains the decoder alone:
   with ``--init-from`` an exported pipeline, its decoder is fine-tuned and its transformer stays valid, since
   the frozen encoder gives the very latents it was trained on.
2. **Latent cache**: ``--cache-size`` training items are rendered and encoded once (posterior mean); the
   per-channel statistics set the VAE's ``scaling_factor`` / ``shift_factor`` (KL) or ``latents_mean`` /
   ``latents_std`` (Wan), exactly the normalisation the diffusers pipelines undo before decoding.
3. **Flow matching**: the transformer and the (tiny) text encoders are trained jointly with the rectified-flow
   objective the pipelines' ``FlowMatchEulerDiscreteScheduler`` integrates: ``x_s = (1 - s) x_0 + s n``, the
   model predicts ``n - x_0``; ``s`` is logit-normal; 10% of captions are dropped to ``""`` (the pipelines'
   default negative prompt) so classifier-free guidance works. An EMA of the weights is what gets exported.

Every ``--ckpt-minutes`` and at the end: ``WORK/state.safetensors`` (raw weights, EMA, AdamW moments: our own
tensors, safetensors only) + ``WORK/state.json`` (step, phase, elapsed time, optimizer hyper-parameters), and the
pipeline (EMA weights; transformer and VAE stored in float16, text encoders in float32) is exported to ``--out``
with ``save_pretrained``, with ``training_log.jsonl`` (loss every ``--log-every`` steps, evaluator scores at each
checkpoint) copied beside it. ``--resume`` continues from ``WORK`` until the total budget is spent.

Example (about 35 minutes on one CPU thread)::

    nohup python -m dit_attn.pipelines.shapes.train --kind t2i --out pipelines/shapes/models/t2i \\
        --minutes 35 > outputs/train_t2i.log 2>&1 &
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import multiprocessing
import os
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dit_attn.checkpoint import load_optimizer_tensors, optimizer_tensors

from .models import (KINDS, NUM_FRAMES, RESOLUTION, T5_MAX_LENGTH, build_pipeline, is_framewise, text_encoder_names,
                     with_temporal_patch)
from .render import render_image, render_video, to_tensor_image
from .world import COLOURS, sample_scene, scene_rng
from dit_attn.pipelines.loading import dtype_kwargs

PRECISIONS = ("fp32", "bf16")
#: Per-kind defaults of the :class:`TrainConfig` fields left ``None`` (the video model trains on fewer, costlier
#: items with a longer VAE phase).
KIND_DEFAULTS = {
    "t2i": dict(minutes=35.0, vae_minutes=6.0, batch=32, cache_size=30000),
    "flux": dict(minutes=35.0, vae_minutes=6.0, batch=32, cache_size=30000),
    "t2v": dict(minutes=40.0, vae_minutes=8.0, batch=16, cache_size=8000),
}
_LOG_NAME = "training_log.jsonl"


# ------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------
def _scene(kind: str, seed: int, i: int):
    scene_kind = "video" if kind == "t2v" else "image"
    return sample_scene(scene_rng(seed, scene_kind, "train", i), split="train", kind=scene_kind)


def render_batch(kind: str, seed: int, indices: Sequence[int]) -> tuple[torch.Tensor, list[str]]:
    """Pixels in [-1, 1] (images ``(B, 3, H, W)``, videos ``(B, 3, F, H, W)``) and captions of training items."""
    scenes = [_scene(kind, seed, int(i)) for i in indices]
    if kind == "t2v":
        x = torch.stack([to_tensor_image(render_video(s, RESOLUTION, NUM_FRAMES)).permute(1, 0, 2, 3)
                         for s in scenes])
    else:
        x = torch.stack([to_tensor_image(render_image(s, RESOLUTION)) for s in scenes])
    return x, [s.caption for s in scenes]


_OPPOSITE_DIRECTION = {"left": "right", "right": "left", "up": "down", "down": "up"}
_MOTION_PHRASE = re.compile(r"\bmoving (left|right|up|down)\b")
_COLOUR_WORD = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def time_reversed_caption(caption: str) -> str:
    """The caption of the clip played backwards: every "moving <direction>" becomes the opposite direction.

    Example::

        >>> time_reversed_caption("a yellow square moving right and a blue circle moving up")
        'a yellow square moving left and a blue circle moving down'
    """
    return _MOTION_PHRASE.sub(lambda m: "moving " + _OPPOSITE_DIRECTION[m.group(1)], caption)


def colour_swapped_caption(caption: str, gen: torch.Generator) -> str:
    """The caption with every colour word replaced by a different palette colour (each drawn from ``gen``): the
    negative of the colour contrast (:func:`flow_loss` ``colour_weight``).

    Example::

        >>> import torch
        >>> caption = "a red circle moving left and a blue square"
        >>> words = colour_swapped_caption(caption, torch.Generator().manual_seed(0)).split()
        >>> words[1] in COLOURS and words[1] != "red", words[7] in COLOURS and words[7] != "blue", words[2:7]
        (True, True, ['circle', 'moving', 'left', 'and', 'a'])
    """
    names = list(COLOURS)

    def other(m: re.Match) -> str:
        return names[(names.index(m.group(1)) + int(torch.randint(1, len(names), (1,), generator=gen))) % len(names)]

    return _COLOUR_WORD.sub(other, caption)


def time_reverse(latents: torch.Tensor, captions: list[str], reverse: np.ndarray) -> tuple[torch.Tensor, list[str]]:
    """Play the clips marked in ``reverse`` backwards: their latent frames (``[B, C, F, H, W]``) in reverse order
    and their captions with opposite directions (:func:`time_reversed_caption`).

    Exact for the frame-wise video VAE, whose latent frames are independent encodings of frames 0, 4, 8 (the
    reversed clip's frames 0, 4, 8 are the original 8, 4, 0; tested). Every reversed clip is a valid training clip
    of the opposite directions (the start positions are sampled so that both ends stay inside the image), and with
    its original it forms a pair that differs only in temporal order and the direction words: the signal the
    model needs to tell "left" from "right", where it had learned the axis but not the sign."""
    if not reverse.any():
        return latents, captions
    mask = torch.from_numpy(reverse).to(latents.device).view(-1, 1, 1, 1, 1)
    latents = torch.where(mask, latents.flip(2), latents)
    return latents, [time_reversed_caption(c) if r else c for c, r in zip(captions, reverse)]


# ------------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors for every tensor, JSON for the rest (nothing is ever unpickled)
# ------------------------------------------------------------------------------------------------------------
def save_state(work: str, modules: dict[str, torch.nn.Module], ema: dict[str, torch.Tensor],
               opt: Optional[torch.optim.Optimizer], meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"model/{name}/{k}"] = v.detach().to("cpu", copy=True)  # a copy: tied weights share storage
    for k, v in ema.items():
        tensors[f"ema/{k}"] = v.to("cpu", copy=True)
    meta = dict(meta)
    if opt is not None:
        opt_tensors, meta["param_groups"] = optimizer_tensors(opt)
        tensors.update(opt_tensors)
    tmp = os.path.join(work, "state.tmp.safetensors")
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(work, "state.safetensors"))
    with open(os.path.join(work, "state.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(work, "state.json.tmp"), os.path.join(work, "state.json"))


def load_state(work: str, modules: dict[str, torch.nn.Module], ema: dict[str, torch.Tensor],
               opt: Optional[torch.optim.Optimizer]) -> dict:
    from safetensors.torch import load_file

    with open(os.path.join(work, "state.json")) as f:
        meta = json.load(f)
    tensors = load_file(os.path.join(work, "state.safetensors"))
    for name, m in modules.items():
        prefix = f"model/{name}/"
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for k in list(ema):
        ema[k].copy_(tensors[f"ema/{k}"])
    if opt is not None and "param_groups" in meta:
        load_optimizer_tensors(opt, tensors, meta["param_groups"])
    return meta


class _Log:
    def __init__(self, path: str):
        self.path = path

    def write(self, **record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------------------
# Phase 1: VAE
# ------------------------------------------------------------------------------------------------------------
def decoder_parameters(vae: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters on the decoding side of a VAE (``decoder`` and ``post_quant_conv``): training only these
    leaves the encoder, hence every latent a transformer was trained on, unchanged."""
    params = list(vae.decoder.parameters())
    if getattr(vae, "post_quant_conv", None) is not None:
        params += list(vae.post_quant_conv.parameters())
    return params


def latent_std(vae) -> torch.Tensor:
    """The standard deviation of a VAE's latents as its pipeline normalises them, broadcastable over them:
    Wan's per-channel ``latents_std``, else ``1 / scaling_factor`` (KL), else 1."""
    cfg = vae.config
    if cfg.get("latents_std") is not None:
        std = torch.tensor(cfg["latents_std"], dtype=torch.float32)
        return std.view(1, -1, 1, 1, 1) if cfg.get("z_dim") is not None else std.view(1, -1, 1, 1)
    return torch.tensor(1.0 / cfg["scaling_factor"] if cfg.get("scaling_factor") else 1.0)


def train_vae(kind: str, vae: torch.nn.Module, work: str, seconds: float, seed: int, batch: int, log: _Log,
              resume_meta: Optional[dict], crop: int = 32, fg_weight: float = 0.0, decoder_only: bool = False,
              lr: float = 1e-3, latent_noise: float = 0.0) -> None:
    """Autoencoder training on fresh renders for ``seconds`` (continuing a saved VAE phase when resuming).

    Trains on random ``crop`` x ``crop`` windows (4x4 latent-aligned offsets are not needed: the model has no
    positional parameters; 0: full frames); the reconstruction scores logged at the end are on full 64 x 64
    renders. ``fg_weight`` > 0 weighs the reconstruction error of object pixels (those away from the clip's
    median colour) ``1 + fg_weight`` times: objects are a few percent of the pixels, and a VAE that paints the
    background alone is a deep local minimum (seen with the video VAE on background-heavy crops).
    ``decoder_only`` trains the decoder alone (:func:`decoder_parameters`; the encoder is frozen, so the latents
    of an already trained transformer keep their meaning and the pipeline gets a better decoder for free).
    ``latent_noise`` adds Gaussian noise of that many latent standard deviations (:func:`latent_std`) to every
    sampled latent, so that the decoder learns to forgive a generator's small
    errors rather than only the encoder's exact codes.
    """
    if decoder_only:
        vae.requires_grad_(False)
        params = decoder_parameters(vae)
        for prm in params:
            prm.requires_grad_(True)
    else:
        params = list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    noise_scale = latent_std(vae).to(next(vae.parameters()).device)
    meta = {"phase": "vae", "vae_step": 0, "vae_elapsed": 0.0}
    if resume_meta is not None and resume_meta.get("phase") == "vae":
        meta = load_state(work, {"vae": vae}, {}, opt)
    step, elapsed = int(meta["vae_step"]), float(meta["vae_elapsed"])
    gen = torch.Generator().manual_seed(seed + 17)  # CPU draws: the same run on any device
    device = next(vae.parameters()).device
    # A frame-wise video VAE (models.make_framewise) trains on still images as one-frame clips: 9x cheaper
    # than clips, and it stays frame-wise because the taps on earlier frames never see anything but padding.
    stills = kind == "t2v" and is_framewise(vae)
    if stills:
        batch *= 4
    vae.train()
    bar = tqdm(desc=f"{kind} vae" + (" (stills)" if stills else ""), unit="step", initial=step, mininterval=20)
    last_ckpt = time.time()
    while elapsed < seconds:
        t0 = time.time()
        idx = range(1_000_000 + step * batch, 1_000_000 + (step + 1) * batch)  # disjoint from the latent cache
        if stills:
            x = render_batch("t2i", seed, idx)[0].unsqueeze(2)
        else:
            x, _ = render_batch(kind, seed, idx)
        x = x.to(device)
        # The VAE is convolutional: random crops give more steps per second; the last quarter of the budget
        # uses full frames so that the mid-block attention sees the real image size.
        if crop and crop < x.shape[-1] and elapsed < 0.75 * seconds:
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=gen))
            x = x[..., oy:oy + crop, ox:ox + crop]
        with torch.set_grad_enabled(not decoder_only):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
            kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
            if latent_noise:
                z = z + latent_noise * noise_scale * torch.randn(z.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        err = (rec - x).pow(2) + 0.5 * (rec - x).abs()
        if fg_weight > 0:
            err = err * (1.0 + fg_weight * foreground_mask(x, threshold=0.1))
        loss = err.mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        elapsed += time.time() - t0
        bar.update(1)
        if step % 25 == 0:  # reading the loss waits for the device: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write(phase="vae", step=step, loss=round(loss.item(), 5), kl=round(kl.item(), 4),
                      elapsed_s=round(elapsed, 1))
        if time.time() - last_ckpt > 300:
            save_state(work, {"vae": vae}, {}, opt, {"phase": "vae", "vae_step": step, "vae_elapsed": elapsed})
            last_ckpt = time.time()
    bar.close()
    vae.eval()
    vae.save_pretrained(os.path.join(work, "vae"), safe_serialization=True)
    log.write(phase="vae_done", step=step, elapsed_s=round(elapsed, 1), reconstruction=vae_reconstruction_scores(
        kind, vae, seed))
    with open(os.path.join(work, "vae_done.json"), "w") as f:
        json.dump({"vae_step": step, "vae_elapsed": elapsed}, f)


@torch.no_grad()
def vae_reconstruction_scores(kind: str, vae, seed: int, n: int = 32) -> dict:
    """Evaluator scores of VAE reconstructions of ``n`` training renders (an upper bound for the generator)."""
    from .scoring import aggregate, score_image, score_video

    idx = range(2_000_000, 2_000_000 + n)
    x, _ = render_batch(kind, seed, idx)
    x = x.to(next(vae.parameters()).device)
    rec = vae.decode(encode_mean(vae, x)).sample.clamp(-1, 1).float().cpu()
    scenes = [_scene(kind, seed, i) for i in idx]
    if kind == "t2v":
        res = [score_video(r, s) for r, s in zip(rec, scenes)]
    else:
        res = [score_image(r, s) for r, s in zip(rec, scenes)]
    return {k: round(v, 4) for k, v in aggregate(res).items()}


# ------------------------------------------------------------------------------------------------------------
# Phase 2: latent cache
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def build_cache(kind: str, vae, n: int, seed: int, chunk: int = 64, workers: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Encode training items ``0..n-1`` (posterior means) and set the VAE's latent normalisation from them.

    Rendering is single-threaded Python; ``workers`` > 1 renders chunks in that many processes (worth it on a
    GPU machine, where rendering and not encoding is the cost). The latents stay on the VAE's device."""
    device = next(vae.parameters()).device
    chunks = [range(start, min(n, start + chunk)) for start in range(0, n, chunk)]
    render = functools.partial(render_batch, kind, seed)
    lat, caps = [], []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            batches = pool.map(render, chunks)
        else:
            batches = map(render, chunks)
        for x, c in tqdm(batches, total=len(chunks), desc=f"{kind} latent cache", mininterval=20):
            lat.append(encode_mean(vae, x.to(device)))
            caps += c
    z = torch.cat(lat)
    if kind == "t2v":  # Wan: per-channel mean / std, undone by the pipeline as z * std + mean
        dims = (0, 2, 3, 4)
        mean, std = z.mean(dims), z.std(dims)
        vae.register_to_config(latents_mean=[round(float(v), 5) for v in mean],
                               latents_std=[round(float(v), 5) for v in std])
        z = (z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    else:  # KL: one scalar shift / scale, undone as z / scaling_factor + shift_factor
        mean, std = float(z.mean()), float(z.std())
        vae.register_to_config(shift_factor=round(mean, 5), scaling_factor=round(1.0 / std, 5))
        z = (z - mean) / std
    return z, caps


def encode_mean(vae, x: torch.Tensor) -> torch.Tensor:
    """Posterior means of ``x``; a frame-wise video VAE encodes only the frames its latents code (0, 4, 8, ...)
    as one-frame clips, which is exactly its clip encoding (test) at a third of the cost."""
    if x.dim() == 5 and is_framewise(vae):
        b, c, f, h, w = x.shape
        step = vae.config.scale_factor_temporal
        frames = x[:, :, ::step].transpose(1, 2).reshape(-1, c, 1, h, w)
        z = vae.encode(frames).latent_dist.mean
        return z.reshape(b, -1, *z.shape[1:]).squeeze(3).transpose(1, 2)
    return vae.encode(x).latent_dist.mean


_NORM_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


def _cached_latents(kind: str, vae, n: int, seed: int, work: str, workers: int = 0) -> tuple[torch.Tensor, list[str]]:
    """:func:`build_cache`, stored in ``WORK/latent_cache.safetensors`` (+ JSON) so that a resume skips it."""
    from safetensors.torch import load_file, save_file

    path, meta_path = os.path.join(work, "latent_cache.safetensors"), os.path.join(work, "latent_cache.json")
    device = next(vae.parameters()).device
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["n"] == n and meta["seed"] == seed:
            vae.register_to_config(**meta["vae_config"])
            return load_file(path)["latents"].float().to(device), meta["captions"]
    latents, captions = build_cache(kind, vae, n, seed, workers=workers)
    save_file({"latents": latents.cpu().contiguous()}, path)
    with open(meta_path, "w") as f:
        json.dump({"n": n, "seed": seed, "captions": captions,
                   "vae_config": {k: vae.config[k] for k in _NORM_KEYS if k in vae.config}}, f)
    return latents, captions


# ------------------------------------------------------------------------------------------------------------
# Phase 3: flow matching
# ------------------------------------------------------------------------------------------------------------
def _encode_text(pipe, kind: str, prompts: list[str]):
    device = pipe.transformer.device
    if kind == "t2i":
        pe, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                              do_classifier_free_guidance=False, max_sequence_length=T5_MAX_LENGTH)
        return {"encoder_hidden_states": pe, "pooled_projections": pooled}
    if kind == "flux":
        pe, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                                  max_sequence_length=T5_MAX_LENGTH)
        return {"encoder_hidden_states": pe, "pooled_projections": pooled, "txt_ids": text_ids}
    pe, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False, device=device,
                               max_sequence_length=T5_MAX_LENGTH)
    return {"encoder_hidden_states": pe}


def predict_velocity(pipe, kind: str, xt: torch.Tensor, s: torch.Tensor, cond: dict) -> torch.Tensor:
    """The transformer's velocity for latents ``xt`` (``[B, C, (F,) H, W]``) at noise levels ``s`` ``[B]``
    (``s = 1``: pure noise), in the latents' layout; ``cond`` from the pipeline's text encoders. FLUX gets packed
    2x2 tokens and the noise level itself as timestep, SD3 and Wan the timestep ``1000 s``."""
    if kind == "flux":
        b, c, h, w = xt.shape
        packed = pipe._pack_latents(xt, b, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, xt.device, xt.dtype)
        v = pipe.transformer(hidden_states=packed, timestep=s, guidance=None, img_ids=img_ids, **cond).sample
        return pipe._unpack_latents(v, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
    return pipe.transformer(hidden_states=xt, timestep=s * 1000.0, **cond).sample


#: A latent position belongs to an object (or its edge) when its channels differ from the latent's median (the
#: uniform background) by more than this, summed over channels, in normalised units: on training renders this
#: keeps 99% of the positions an object covers by a quarter or more, and marks 26% of all positions.
FOREGROUND_THRESHOLD = 1.0


def foreground_mask(x: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """``[B, 1, (F,) H, W]`` float mask of the positions of ``x`` (``[B, C, (F,) H, W]``) that hold objects: their
    channels differ from the median (the uniform background) by more than ``threshold`` summed over channels.
    The default suits normalised latents; the VAE's pixel loss uses 0.1 on pixels in [-1, 1]."""
    median = x.flatten(2).median(dim=2).values.view(*x.shape[:2], *([1] * (x.dim() - 2)))
    return ((x - median).abs().sum(dim=1, keepdim=True) > threshold).to(x.dtype)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def flow_loss(pipe, kind: str, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
              logit_mean: float = 0.0, logit_std: float = 1.0, fg_weight: float = 0.0,
              sign_weight: float = 0.0, sign_margin: float = 0.05, colour_weight: float = 0.0,
              colour_margin: float = 0.3) -> torch.Tensor:
    """Rectified-flow loss of one batch of normalised latents ``x0`` with their prompts; noise levels
    ``s = sigmoid(logit_mean + logit_std * z)`` (``s = 1``: pure noise). ``fg_weight`` > 0 weighs the error at
    object positions (:func:`foreground_mask`) ``1 + fg_weight`` times (a weighted mean: the loss keeps its
    scale): objects are ~15% of the latent, and their silhouettes are what the plain loss learns slowest.

    ``sign_weight`` > 0 (t2v) adds ``sign_weight`` times the mean over clips with a motion phrase of the
    :func:`sign_contrast` hinge with ``sign_margin``: the same noisy clip is also denoised under its
    time-reversed caption, which must then predict worse. ``colour_weight`` > 0 adds the same hinge (margin
    ``colour_margin``) for the caption with its colour words swapped (:func:`colour_swapped_caption`), over clips
    whose caption names a colour. All captions of a step share one forward of the repeated batch."""
    b = x0.shape[0]
    # CPU draws: the same run on any device; pinned + non_blocking so a CUDA step does not wait on the copy
    noise = _to_device(torch.randn(x0.shape, generator=gen), x0.device)
    s = _to_device(torch.sigmoid(logit_mean + logit_std * torch.randn(b, generator=gen)), x0.device)
    sv = s.view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - sv) * x0 + sv * noise
    weight = (1.0 + fg_weight * foreground_mask(x0)).expand_as(x0) if fg_weight > 0 else torch.ones_like(x0)
    contrasts = []  # (weight, margin, the other captions)
    if sign_weight > 0:
        contrasts.append((sign_weight, sign_margin, [time_reversed_caption(p) for p in prompts]))
    if colour_weight > 0:
        contrasts.append((colour_weight, colour_margin, [colour_swapped_caption(p, gen) for p in prompts]))
    contrasts = [c for c in contrasts if any(a != p for a, p in zip(c[2], prompts))]
    if not contrasts:
        pred = predict_velocity(pipe, kind, xt, s, _encode_text(pipe, kind, prompts))
        return ((pred - (noise - x0)).pow(2) * weight).sum() / weight.sum()
    # one forward for all captions: every contrast sees the very same noisy latents
    k = 1 + len(contrasts)
    all_prompts = prompts + [p for _, _, other in contrasts for p in other]
    preds = predict_velocity(pipe, kind, torch.cat([xt] * k), torch.cat([s] * k),
                             _encode_text(pipe, kind, all_prompts)).chunk(k)
    errs = [(pred - (noise - x0)).pow(2) * weight for pred in preds]
    per_clip = [e.flatten(1).sum(1) / weight.flatten(1).sum(1) for e in errs]
    loss = errs[0].sum() / weight.sum()
    for (w, margin, other), per_clip_other in zip(contrasts, per_clip[1:]):
        mask = torch.tensor([a != p for a, p in zip(other, prompts)], device=x0.device, dtype=per_clip[0].dtype)
        loss = loss + w * (sign_contrast(per_clip[0], per_clip_other, margin) * mask).sum() / mask.sum()
    return loss


def sign_contrast(loss_true: torch.Tensor, loss_reversed: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-clip hinge ``max(0, margin - (loss_reversed - loss_true) / loss_true)``, with ``loss_true`` in the
    denominator held constant: zero once the time-reversed caption predicts the clip's velocity at least
    ``margin`` (relative) worse than its own caption.

    The colour contrast uses the same hinge with colour-swapped captions. The plain flow loss barely rewards
    knowing a clip's direction sign (at most noise levels the noisy clip
    already shows which way its objects go), and the bundled t2v learned the axis but not the sign; this term
    asks the text encoder and transformer directly to make "moving left" and "moving right" predict differently.

    Example::

        >>> import torch
        >>> sign_contrast(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.2]), margin=0.05)
        tensor([0.0500, 0.0000])
    """
    return torch.relu(margin - (loss_reversed - loss_true) / loss_true.detach())


def _trainables(pipe, kind: str) -> dict[str, torch.nn.Module]:
    mods = {"transformer": pipe.transformer}
    for name in text_encoder_names(kind):
        mods[name] = getattr(pipe, name)
    return mods


def export(pipe, kind: str, modules: dict[str, torch.nn.Module], ema: dict[str, torch.Tensor], out: str,
           work: str) -> None:
    """Save the pipeline with EMA weights to ``out`` (transformer + VAE float16, text encoders float32)."""
    export_pipe = copy.deepcopy(pipe)
    for name in modules:
        mod = getattr(export_pipe, name)
        sd = {k: ema[f"{name}/{k}"] if f"{name}/{k}" in ema else v for k, v in mod.state_dict().items()}
        mod.load_state_dict(sd)
    export_pipe.transformer.to(torch.float16)
    export_pipe.vae.to(torch.float16)
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.copy(os.path.join(work, _LOG_NAME), os.path.join(tmp, _LOG_NAME))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _quick_eval(pipe, kind: str, modules, ema, n: int, seed: int) -> dict:
    """Evaluator scores of the EMA weights on ``n`` held-out and ``n`` training prompts (few steps, for the log)."""
    from .generate import evaluate_pipeline

    eval_pipe = copy.copy(pipe)
    backup = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    try:
        for name, m in modules.items():
            m.load_state_dict({k: ema.get(f"{name}/{k}", v) for k, v in m.state_dict().items()})
            m.eval()
        out = {}
        for split in ("heldout", "train"):
            summary, _ = evaluate_pipeline(eval_pipe, kind, split=split, n=n, seed=seed, batch=16)
            keys = ("object_accuracy", "correct", "colour", "shape", "relation", "position", "direction", "motion")
            out[split] = {k: round(v, 4) for k, v in summary.items() if k in keys}
        return out
    finally:
        for name, m in modules.items():
            m.load_state_dict(backup[name])
            m.train()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one ShapesWorld training run needs; :func:`train` takes one, the CLI's flags map to its fields
    one to one (``--vae-minutes`` is ``vae_minutes``, ``--time-reverse`` is ``time_reverse_p``).

    ``minutes``, ``vae_minutes``, ``batch`` and ``cache_size`` left ``None`` take the kind's defaults
    (:data:`KIND_DEFAULTS`), ``work`` left ``None`` is ``outputs/shapes_train/<kind>``; the fields are checked
    when the config is made, so a bad combination fails before anything is built or deleted.

    ``device``: where the VAE, text encoders and transformer train ("cpu", "cuda", "cuda:1"; random draws stay on
    the CPU, so a run does the same steps on any device); ``workers``: processes rendering the latent cache;
    ``precision``: ``"fp32"`` or ``"bf16"`` (mixed precision: the flow-matching forward under bfloat16 autocast,
    weights, AdamW moments and EMA stay float32; ~1.45x faster steps on our AVX512-BF16 CPU);
    ``time_reverse_p``: t2v only, the probability that a training clip is played backwards with its directions
    swapped (:func:`time_reverse`); ``temporal_patch``: t2v only, latent frames per transformer patch (0: the
    model's own; a one-frame model is converted with :func:`models.with_temporal_patch`); ``sign_weight``,
    ``sign_margin``: t2v only, the direction-sign contrast of :func:`flow_loss` (0: off); ``colour_weight``,
    ``colour_margin``: the colour contrast of :func:`flow_loss` (any kind; 0: off); ``vae_decoder_only``,
    ``vae_lr``, ``vae_latent_noise``: see :func:`train_vae` (with ``init_from`` and ``vae_minutes`` > 0, the
    exported pipeline's decoder is fine-tuned before the flow phase; its transformer stays valid).

    Example::

        >>> config = TrainConfig(kind="t2v", out="model")
        >>> config.minutes, config.batch, config.work
        (40.0, 16, 'outputs/shapes_train/t2v')
        >>> TrainConfig(kind="t2i", out="model", time_reverse_p=0.5)
        Traceback (most recent call last):
        ...
        ValueError: time reversal is a t2v augmentation; kind 't2i' has no motion
    """

    kind: str
    out: str
    work: Optional[str] = None
    minutes: Optional[float] = None
    vae_minutes: Optional[float] = None
    batch: Optional[int] = None
    cache_size: Optional[int] = None
    lr: float = 5e-4
    seed: int = 0
    resume: bool = False
    init_vae: Optional[str] = None
    init_from: Optional[str] = None
    log_every: int = 50
    ckpt_minutes: float = 6.0
    eval_n: int = 32
    logit_mean: float = 0.0
    logit_std: float = 1.0
    warmup: int = 200
    vae_crop: int = 32
    vae_fg_weight: float = 0.0
    vae_decoder_only: bool = False
    vae_lr: float = 1e-3
    vae_latent_noise: float = 0.0
    fg_weight: float = 0.0
    device: str = "cpu"
    workers: int = 0
    precision: str = "fp32"
    time_reverse_p: float = 0.0
    temporal_patch: int = 0
    sign_weight: float = 0.0
    sign_margin: float = 0.05
    colour_weight: float = 0.0
    colour_margin: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown ShapesWorld kind {self.kind!r}; expected one of {KINDS}")
        defaults = KIND_DEFAULTS[self.kind]
        for name in ("minutes", "vae_minutes", "batch", "cache_size"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        if self.work is None:
            object.__setattr__(self, "work", os.path.join("outputs", "shapes_train", self.kind))
        self._check()

    def _check(self) -> None:
        if self.minutes < 0 or self.vae_minutes < 0 or self.ckpt_minutes <= 0:
            raise ValueError(f"minutes and vae_minutes must be >= 0 and ckpt_minutes > 0, got {self.minutes!r}, "
                             f"{self.vae_minutes!r} and {self.ckpt_minutes!r}")
        if self.batch < 1 or self.cache_size < 1 or self.log_every < 1 or self.warmup < 1:
            raise ValueError(f"batch, cache_size, log_every and warmup must be >= 1, got {self.batch!r}, "
                             f"{self.cache_size!r}, {self.log_every!r} and {self.warmup!r}")
        if self.lr <= 0 or self.eval_n < 0 or self.workers < 0 or self.vae_crop < 0:
            raise ValueError(f"lr must be > 0 and eval_n, workers, vae_crop >= 0, got {self.lr!r}, {self.eval_n!r}, "
                             f"{self.workers!r} and {self.vae_crop!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0.0 <= self.time_reverse_p <= 1.0:
            raise ValueError(f"time_reverse_p must be a probability in [0, 1], got {self.time_reverse_p!r}")
        if self.time_reverse_p and self.kind != "t2v":
            raise ValueError(f"time reversal is a t2v augmentation; kind {self.kind!r} has no motion")
        if self.temporal_patch and self.kind != "t2v":
            raise ValueError(f"temporal_patch is a t2v option; kind {self.kind!r} has no frames")
        if self.sign_weight and self.kind != "t2v":
            raise ValueError(f"the sign contrast is a t2v loss; kind {self.kind!r} has no motion")
        if self.sign_weight < 0 or self.sign_margin <= 0:
            raise ValueError(f"sign_weight must be >= 0 and sign_margin > 0, got {self.sign_weight!r} and "
                             f"{self.sign_margin!r}")
        if self.colour_weight < 0 or self.colour_margin <= 0:
            raise ValueError(f"colour_weight must be >= 0 and colour_margin > 0, got {self.colour_weight!r} and "
                             f"{self.colour_margin!r}")
        if self.vae_decoder_only and not (self.init_from or self.init_vae):
            raise ValueError("vae_decoder_only fine-tunes the decoder of a trained VAE: pass init_from (an exported "
                             "pipeline) or init_vae; a fresh VAE's encoder is random")
        if self.vae_decoder_only and self.vae_minutes <= 0:
            raise ValueError("vae_decoder_only needs vae_minutes > 0 (the time the decoder trains); got "
                             f"{self.vae_minutes!r}")
        if self.vae_lr <= 0 or self.vae_latent_noise < 0:
            raise ValueError(f"vae_lr must be > 0 and vae_latent_noise >= 0, got {self.vae_lr!r} and "
                             f"{self.vae_latent_noise!r}")
        if self.temporal_patch < 0:
            raise ValueError(f"temporal_patch must be >= 0 (0: keep the model's own), got {self.temporal_patch!r}")


def train(config: TrainConfig) -> None:
    """Train (or resume) one ShapesWorld model as ``config`` says (see :class:`TrainConfig`)."""
    c = config  # short name: the phases below read most fields
    kind, work = c.kind, c.work
    torch.manual_seed(c.seed)
    np.random.seed(c.seed)
    os.makedirs(work, exist_ok=True)
    log = _Log(os.path.join(work, _LOG_NAME))
    meta: Optional[dict] = None
    if c.resume and os.path.exists(os.path.join(work, "state.json")):
        with open(os.path.join(work, "state.json")) as f:
            meta = json.load(f)
    elif not c.resume:
        for name in ("state.json", "state.safetensors", _LOG_NAME, "vae_done.json", "latent_cache.safetensors",
                     "latent_cache.json"):
            if os.path.exists(os.path.join(work, name)):
                os.remove(os.path.join(work, name))
        shutil.rmtree(os.path.join(work, "vae"), ignore_errors=True)
    budget = c.minutes * 60.0
    pipe = build_pipeline(kind, seed=c.seed)
    if c.init_from:  # continue from an exported pipeline (a new recipe on trained weights; on resume the state
        # file then overrides the weights)
        pipe = type(pipe).from_pretrained(c.init_from, **dtype_kwargs(torch.float32), use_safetensors=True,
                                          local_files_only=True)
        if meta is None and not (c.vae_decoder_only and c.vae_minutes > 0):  # its VAE is trained: no VAE phase
            pipe.vae.save_pretrained(os.path.join(work, "vae"), safe_serialization=True)
            with open(os.path.join(work, "vae_done.json"), "w") as f:
                json.dump({"vae_step": 0, "vae_elapsed": 0.0, "init_from": c.init_from}, f)
            log.write(phase="init", init_from=c.init_from)
    if c.temporal_patch and pipe.transformer.config.patch_size[0] != c.temporal_patch:
        pipe.register_modules(transformer=with_temporal_patch(pipe.transformer, c.temporal_patch))
        log.write(phase="note", temporal_patch=c.temporal_patch)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(c.device)
    vae_cls = type(pipe.vae)

    # Phase 1: VAE
    vae_dir = os.path.join(work, "vae")
    if os.path.exists(os.path.join(work, "vae_done.json")):
        pipe.register_modules(vae=vae_cls.from_pretrained(vae_dir, **dtype_kwargs(torch.float32), use_safetensors=True).to(c.device))
    else:
        if c.init_vae:
            pipe.register_modules(vae=vae_cls.from_pretrained(c.init_vae, **dtype_kwargs(torch.float32),
                                                               use_safetensors=True).to(c.device))
        train_vae(kind, pipe.vae, work, c.vae_minutes * 60.0, c.seed, 16 if kind != "t2v" else 4, log, meta,
                  crop=c.vae_crop, fg_weight=c.vae_fg_weight, decoder_only=c.vae_decoder_only, lr=c.vae_lr,
                  latent_noise=c.vae_latent_noise)
        meta = None
    with open(os.path.join(work, "vae_done.json")) as f:
        vae_elapsed = float(json.load(f)["vae_elapsed"])
    pipe.vae.eval().requires_grad_(False)

    # Phase 2: latent cache (re-encoded on resume: deterministic, a few minutes at most)
    t_cache = time.time()
    latents, captions = _cached_latents(kind, pipe.vae, c.cache_size, c.seed, work, c.workers)
    cache_s = time.time() - t_cache
    log.write(phase="cache", n=len(captions), seconds=round(cache_s, 1),
              vae_config={k: pipe.vae.config[k] for k in ("scaling_factor", "shift_factor", "latents_mean",
                                                           "latents_std") if k in pipe.vae.config})

    # Phase 3: flow matching
    if c.time_reverse_p and not is_framewise(pipe.vae):
        raise ValueError("time reversal needs the frame-wise video VAE (models.make_framewise): a clip-coding VAE's "
                         "latent frames are not independent, so reversing them is not the reversed clip")
    modules = _trainables(pipe, kind)
    params = [p for m in modules.values() for p in m.parameters()]
    for m in modules.values():
        m.train()
    opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema = {f"{name}/{k}": v.detach().clone().float() for name, m in modules.items()
           for k, v in m.state_dict().items()}
    step, elapsed = 0, 0.0
    if meta is not None and meta.get("phase") == "transformer":
        meta = load_state(work, modules, ema, opt)
        step, elapsed = int(meta["step"]), float(meta["elapsed"])
        if meta.get("precision", "fp32") != c.precision:  # allowed (the weights are float32 either way): say so
            tqdm.write(f"[{kind}] resuming a {meta.get('precision', 'fp32')} run with precision {c.precision}")
            log.write(phase="note", step=step, precision_from=meta.get("precision", "fp32"), precision=c.precision)
        cache_s = float(meta.get("cache_seconds", cache_s))  # a resumed run reads the cache: charge the first build
    seconds = budget - vae_elapsed - cache_s
    gen = torch.Generator().manual_seed(c.seed * 7919 + step)  # a resumed run continues with fresh, seeded draws
    order_rng = np.random.default_rng([c.seed, step])
    bar = tqdm(desc=f"{kind} flow", unit="step", initial=step, mininterval=20)
    last_ckpt, run_loss, run_n = time.time(), 0.0, 0

    def checkpoint(final: bool = False) -> None:
        scores = _quick_eval(pipe, kind, modules, ema, c.eval_n, seed=20240) if c.eval_n else {}
        log.write(phase="eval", step=step, elapsed_s=round(elapsed, 1), final=final, **scores)
        state_meta = {"phase": "transformer", "step": step, "elapsed": elapsed, "kind": kind, "batch": c.batch,
                      "lr": c.lr, "seed": c.seed, "cache_size": c.cache_size, "vae_elapsed": vae_elapsed,
                      "cache_seconds": cache_s, "minutes": c.minutes, "logit_mean": c.logit_mean,
                      "logit_std": c.logit_std, "init_from": c.init_from, "fg_weight": c.fg_weight,
                      "precision": c.precision, "time_reverse_p": c.time_reverse_p, "sign_weight": c.sign_weight,
                      "sign_margin": c.sign_margin, "colour_weight": c.colour_weight, "colour_margin": c.colour_margin}
        save_state(work, modules, ema, opt, state_meta)
        export(pipe, kind, modules, ema, c.out, work)
        tqdm.write(f"[{kind}] step {step}: checkpoint saved, exported to {c.out}; eval {scores}")

    while elapsed < seconds:
        t0 = time.time()
        idx = order_rng.integers(0, latents.shape[0], c.batch)
        x0 = latents[torch.from_numpy(idx).to(latents.device)]
        prompts = [captions[i] for i in idx]
        if c.time_reverse_p:  # no extra draws otherwise: older runs resume with the same data order
            x0, prompts = time_reverse(x0, prompts, order_rng.random(c.batch) < c.time_reverse_p)
        prompts = ["" if order_rng.random() < 0.1 else c for c in prompts]
        for g in opt.param_groups:
            g["lr"] = c.lr * min(1.0, (step + 1) / c.warmup)
        with torch.autocast(torch.device(c.device).type, dtype=torch.bfloat16, enabled=c.precision == "bf16"):
            loss = flow_loss(pipe, kind, x0, prompts, gen, c.logit_mean, c.logit_std, c.fg_weight, c.sign_weight,
                             c.sign_margin, c.colour_weight, c.colour_margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, m in modules.items():
                for k, v in m.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[f"{name}/{k}"].mul_(decay).add_(v, alpha=1 - decay)
        elapsed += time.time() - t0
        run_loss += loss.detach()  # read once per log line, not every step
        run_n += 1
        bar.update(1)
        if step % c.log_every == 0:
            mean_loss = float(run_loss) / run_n
            log.write(phase="flow", step=step, loss=round(mean_loss, 5), elapsed_s=round(elapsed, 1))
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            run_loss, run_n = 0.0, 0
        if time.time() - last_ckpt > c.ckpt_minutes * 60.0:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    checkpoint(final=True)


# Flags whose name is not the field's.
_FLAG_FIELDS = {"time_reverse": "time_reverse_p"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: every flag left out keeps :class:`TrainConfig`'s default (defaults live there only)."""
    p = argparse.ArgumentParser(prog="python -m dit_attn.pipelines.shapes.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--out", required=True, help="folder the trained pipeline is exported to (save_pretrained)")
    p.add_argument("--work", help="checkpoints and logs (default outputs/shapes_train/<kind>)")
    p.add_argument("--minutes", type=float, help="total wall-clock budget, all phases and resumes")
    p.add_argument("--vae-minutes", type=float, help="part of the budget spent on the VAE")
    p.add_argument("--init-vae", help="start the VAE from this folder (e.g. a trained t2i vae)")
    p.add_argument("--batch", type=int)
    p.add_argument("--cache-size", type=int, help="training items encoded for the latent cache")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from --work")
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-minutes", type=float)
    p.add_argument("--eval-n", type=int, help="prompts per split scored at each checkpoint (0: off)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto (cuda when available); the random draws are the same on any")
    p.add_argument("--workers", type=int,
                   help="processes rendering the latent cache (e.g. 12 on a GPU machine; 0: in this process)")
    p.add_argument("--logit-mean", type=float,
                   help="noise levels s = sigmoid(mean + std z) (s = 1 is noise); > 0 trains more at high noise")
    p.add_argument("--logit-std", type=float)
    p.add_argument("--init-from",
                   help="start from an exported ShapesWorld pipeline folder (its VAE is kept; no VAE phase)")
    p.add_argument("--warmup", type=int, help="learning-rate warm-up steps")
    p.add_argument("--vae-crop", type=int, help="VAE training crop size in pixels (0: full frames)")
    p.add_argument("--vae-fg-weight", type=float,
                   help="extra weight of object pixels in the VAE loss (e.g. 4 for the video VAE)")
    p.add_argument("--vae-decoder-only", action="store_true",
                   help="train only the VAE decoder (encoder frozen: latents unchanged); with --init-from and "
                        "--vae-minutes > 0 this fine-tunes a trained pipeline's decoder before the flow phase")
    p.add_argument("--vae-lr", type=float, help="VAE learning rate (e.g. 5e-4 to fine-tune)")
    p.add_argument("--vae-latent-noise", type=float,
                   help="noise added to the VAE's sampled latents, in latent standard deviations (e.g. 0.1)")
    p.add_argument("--fg-weight", type=float,
                   help="extra weight of object positions in the flow loss (e.g. 4: objects count 5x)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="flow-matching compute: fp32, or bf16 mixed precision (float32 weights; faster on CPUs "
                        "with AVX512-BF16/AMX and on GPUs)")
    p.add_argument("--time-reverse", type=float,
                   help="t2v: probability of playing a training clip backwards with its directions swapped "
                        "(exact with the frame-wise VAE; e.g. 0.5)")
    p.add_argument("--temporal-patch", type=int,
                   help="t2v: latent frames per transformer patch (0: the model's own); converts a one-frame "
                        "--init-from model (models.with_temporal_patch), e.g. 3 for the whole 9-frame clip")
    p.add_argument("--sign-weight", type=float,
                   help="t2v: weight of the direction-sign contrast (each clip also denoised under its "
                        "time-reversed caption, which must predict --sign-margin worse); e.g. 1")
    p.add_argument("--sign-margin", type=float, help="t2v: relative loss margin of the sign contrast")
    p.add_argument("--colour-weight", type=float,
                   help="weight of the colour contrast (each item also denoised under its caption with the colour "
                        "words swapped, which must predict --colour-margin worse); e.g. 1")
    p.add_argument("--colour-margin", type=float, help="relative loss margin of the colour contrast")
    args = vars(p.parse_args(argv))
    threads, device_flag = args.pop("threads"), args.pop("device")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device_flag == "auto" else device_flag
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        p.error(f"--device {device_flag!r} is not usable here ({err}); use cpu, cuda, cuda:N or auto")
    try:
        config = TrainConfig(device=device, **{_FLAG_FIELDS.get(k, k): v for k, v in args.items()})
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(threads)
    train(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
