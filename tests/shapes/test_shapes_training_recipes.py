"""ShapesWorld training recipes: the frame-wise video VAE, the object-weighted flow loss, time reversal, temporal
patches, the direction-sign contrast and the decoder-only VAE fine-tune."""

import json
import os

import pytest
import torch

from dit_attn.pipelines.shapes.models import is_framewise, make_framewise, vae_wan
from dit_attn.pipelines.shapes.train import encode_mean, flow_loss, foreground_mask, render_batch
from dit_attn.testing import cpu_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


def _clips(n=2, seed=0):
    return torch.rand(n, 3, 9, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_framewise_vae_codes_frames_0_4_8_and_repeats_them():
    vae = vae_wan(seed=3).eval()
    assert is_framewise(vae)
    x = _clips()
    z = vae.encode(x).latent_dist.mean
    assert z.shape == (2, 4, 3, 8, 8)
    for k, frame in enumerate((0, 4, 8)):  # each latent frame is the image encoding of one video frame
        alone = vae.encode(x[:, :, frame:frame + 1]).latent_dist.mean[:, :, 0]
        torch.testing.assert_close(z[:, :, k], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(encode_mean(vae, x), z, rtol=0, atol=1e-6)  # the cheap path used for the cache
    out = vae.decode(z).sample
    assert out.shape == x.shape
    for run in ((1, 2, 3, 4), (5, 6, 7, 8)):  # frames decoded from one latent frame are equal
        for f in run[1:]:
            torch.testing.assert_close(out[:, :, f], out[:, :, run[0]], rtol=0, atol=1e-6)
    assert (out[:, :, 4] - out[:, :, 5]).abs().max() > 1e-3  # ... and differ between latent frames
    torch.testing.assert_close(out[:, :, 8], vae.decode(z[:, :, 2:]).sample[:, :, 0], rtol=0, atol=1e-5)


def test_framewise_vae_stays_framewise_when_trained_on_stills_but_not_on_clips():
    vae = vae_wan(seed=1)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-2)

    def step(x):
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        opt.zero_grad()
        (rec - x).pow(2).mean().backward()
        opt.step()

    for seed in range(2):
        step(_clips(seed=seed)[:, :, :1])  # one-frame clips: the taps on earlier frames see only padding
    assert is_framewise(vae)
    step(_clips(seed=5))  # a real clip trains the temporal taps: the shortcut must then switch itself off
    assert not is_framewise(vae)
    with torch.no_grad():
        x = _clips(seed=6)
        torch.testing.assert_close(encode_mean(vae, x), vae.encode(x).latent_dist.mean)


def test_make_framewise_is_idempotent():
    vae = vae_wan(seed=2)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    make_framewise(vae)
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_foreground_mask_marks_objects_and_the_weighted_loss_reduces_to_mse():
    from dit_attn.pipelines.shapes import bundled

    pipe = bundled.load_shapes("t2i")
    vae = pipe.vae
    x, captions = render_batch("t2i", 0, range(8))
    bg = x.flatten(2).median(dim=2).values[..., None, None]
    objects = torch.nn.functional.avg_pool2d(((x - bg).abs().sum(1, keepdim=True) > 0.1).float(), 4) > 0.25
    with torch.no_grad():
        z = (encode_mean(vae, x) - vae.config.shift_factor) * vae.config.scaling_factor
    mask = foreground_mask(z)
    assert mask.shape == (8, 1, 16, 16)
    recall = float(mask[objects].mean())
    assert recall > 0.95 and 0.05 < float(mask.mean()) < 0.5, (recall, float(mask.mean()))
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = flow_loss(pipe, "t2i", z, captions, gen())
    torch.testing.assert_close(flow_loss(pipe, "t2i", z, captions, gen(), fg_weight=0.0), plain)
    weighted = flow_loss(pipe, "t2i", z, captions, gen(), fg_weight=4.0)
    assert torch.isfinite(weighted) and not torch.isclose(weighted, plain)
    weighted.backward()
    assert pipe.transformer.proj_out.weight.grad is not None


@torch.no_grad()
def test_latent_cache_rendered_in_worker_processes_is_the_same():
    from dit_attn.pipelines.shapes.models import vae_kl
    from dit_attn.pipelines.shapes.train import build_cache

    here = build_cache("t2i", vae_kl(seed=1).eval(), n=10, seed=5, chunk=4)
    pooled = build_cache("t2i", vae_kl(seed=1).eval(), n=10, seed=5, chunk=4, workers=2)
    assert here[1] == pooled[1] and len(here[1]) == 10
    torch.testing.assert_close(pooled[0], here[0], rtol=0, atol=0)


def test_train_cli_rejects_an_unusable_device(tmp_path, capsys):
    from dit_attn.pipelines.shapes.train import main

    with pytest.raises(SystemExit):
        main(["--kind", "t2i", "--out", str(tmp_path / "m"), "--device", "tpu9"])
    err = capsys.readouterr().err
    assert "--device 'tpu9' is not usable" in err and "cpu, cuda, cuda:N or auto" in err
    assert not (tmp_path / "m").exists()


def test_bf16_mixed_precision_loss_matches_fp32_and_keeps_float32_gradients():
    from dit_attn.pipelines.shapes.models import build_pipeline
    from dit_attn.pipelines.shapes.train import flow_loss

    pipe = build_pipeline("t2i", seed=0)
    x0 = torch.randn(4, pipe.vae.config.latent_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle above a blue square", "a small green star on the left", "", "a cyan ring"]
    losses = []
    for bf16 in (False, True):
        pipe.transformer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = flow_loss(pipe, "t2i", x0, prompts, torch.Generator().manual_seed(2), fg_weight=4.0)
        loss.backward()
        losses.append(loss.detach().double())
        grads = [p.grad for p in pipe.transformer.parameters() if p.requires_grad]
        assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert losses[1].dtype == torch.float64 and abs(losses[1] - losses[0]) < 0.02 * losses[0]


@torch.no_grad()
def test_time_reversed_latents_are_the_latents_of_the_reversed_scene():
    import dataclasses

    import numpy as np

    from dit_attn.pipelines.shapes.render import render_video, to_tensor_image
    from dit_attn.pipelines.shapes.train import _scene, time_reverse, time_reversed_caption
    from dit_attn.pipelines.shapes.world import caption

    vae = vae_wan(seed=4).eval()
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    scenes = [_scene("t2v", 0, i) for i in range(4)]
    # the same motion played backwards: each object starts where it ended, moving the opposite way
    backwards = [dataclasses.replace(s, objects=[dataclasses.replace(o, center=o.center_at(1.0),
                                                                     direction=opposite[o.direction])
                                                 for o in s.objects]) for s in scenes]

    def clips(ss):
        return torch.stack([to_tensor_image(render_video(s, 32, 9)).permute(1, 0, 2, 3) for s in ss])

    x, x_back = clips(scenes), clips(backwards)
    torch.testing.assert_close(x_back, x.flip(2), rtol=0, atol=1e-5)  # rendering agrees: frame f is frame 8 - f
    z, z_back = encode_mean(vae, x), encode_mean(vae, x_back)
    assert (z[:, :, 0] - z[:, :, 2]).abs().max() > 1e-3  # the clips move: reversal is not a no-op
    reverse = np.array([True, False, True, True])
    got, caps = time_reverse(z, [s.caption for s in scenes], reverse)
    want = torch.where(torch.from_numpy(reverse).view(-1, 1, 1, 1, 1), z_back, z)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert caps == [caption(b) if r else s.caption for s, b, r in zip(scenes, backwards, reverse)]
    assert all(time_reversed_caption(caption(b)) == s.caption for s, b in zip(scenes, backwards))


def test_time_reversal_is_refused_where_it_is_not_exact(tmp_path):
    from dit_attn.pipelines.shapes.train import TrainConfig

    with pytest.raises(ValueError, match="t2v augmentation"):
        TrainConfig(kind="t2i", out=str(tmp_path / "o"), work=str(tmp_path / "w"), time_reverse_p=0.5)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        TrainConfig(kind="t2v", out=str(tmp_path / "o"), work=str(tmp_path / "w"), time_reverse_p=1.5)


def _one_frame_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    from dit_attn.pipelines.shapes.models import transformer_config

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**(transformer_config("t2v") | {"patch_size": (1, 2, 2)})).eval()
    with torch.no_grad():  # fresh Wan init zeroes nothing we test, but make every weight non-trivial anyway
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_temporal_patch_keeps_still_clips_and_breaks_time_reversal_symmetry():
    """The converted transformer embeds a still clip exactly as the one-frame model embeds its frame and emits the
    same output for every frame; after training (here: perturbed frame weights) it is no longer equivariant under
    playing the clip backwards, which a one-frame Wan model nearly is (the reason it could not learn the sign)."""
    from dit_attn.pipelines.shapes.models import with_temporal_patch

    old = _one_frame_wan()
    new = with_temporal_patch(old, 3)
    assert tuple(new.config.patch_size) == (3, 2, 2) and tuple(old.config.patch_size) == (1, 2, 2)
    g = torch.Generator().manual_seed(1)
    frame = torch.randn(2, 4, 1, 16, 16, generator=g)
    still = frame.repeat(1, 1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(new.patch_embedding(still), old.patch_embedding(frame), rtol=1e-5, atol=1e-5)
        text, t = torch.randn(2, 7, 64, generator=g), torch.tensor([300.0, 700.0])
        out = new(hidden_states=still, timestep=t, encoder_hidden_states=text).sample
        assert out.shape == still.shape
        torch.testing.assert_close(out[:, :, 0], out[:, :, 2], rtol=0, atol=0)
        new.patch_embedding.weight[:, :, 0].add_(0.05 * torch.randn_like(new.patch_embedding.weight[:, :, 0]))
        clip = torch.randn(2, 4, 3, 16, 16, generator=g)
        fwd = new(hidden_states=clip, timestep=t, encoder_hidden_states=text).sample
        bwd = new(hidden_states=clip.flip(2), timestep=t, encoder_hidden_states=text).sample.flip(2)
        assert (fwd - bwd).abs().max() > 1e-2 * fwd.abs().mean()


def test_temporal_patch_errors(tmp_path):
    from dit_attn.pipelines.shapes.models import with_temporal_patch
    from dit_attn.pipelines.shapes.train import TrainConfig

    new = with_temporal_patch(_one_frame_wan(), 3)
    with pytest.raises(ValueError, match="one frame per patch"):
        with_temporal_patch(new, 3)
    with pytest.raises(ValueError, match="positive int"):
        with_temporal_patch(_one_frame_wan(), 0)
    with pytest.raises(ValueError, match="t2v option"):
        TrainConfig(kind="t2i", out=str(tmp_path / "o"), work=str(tmp_path / "w"), temporal_patch=3)


def _tiny_t2v(seed: int = 0):
    from dit_attn.pipelines.shapes.models import build_pipeline

    pipe = build_pipeline("t2v", seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sign_contrast_loss_is_the_flow_loss_plus_the_hinge_over_clips_with_motion():
    """Built from the definition: per-clip weighted errors under the true and the time-reversed caption on the same
    noisy latents; the hinge only counts clips whose caption names a direction."""
    from dit_attn.pipelines.shapes.train import _encode_text, predict_velocity, sign_contrast, time_reversed_caption

    pipe = _tiny_t2v()
    c = pipe.transformer.config.in_channels
    x0 = torch.randn(3, c, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    prompts = ["a red circle moving left", "", "a small blue cross moving up and a pink square moving down"]
    with torch.no_grad():
        got = flow_loss(pipe, "t2v", x0, prompts, torch.Generator().manual_seed(4), fg_weight=4.0,
                        sign_weight=0.7, sign_margin=0.3)
        plain = flow_loss(pipe, "t2v", x0, prompts, torch.Generator().manual_seed(4), fg_weight=4.0)
        gen = torch.Generator().manual_seed(4)
        noise = torch.randn(x0.shape, generator=gen)
        s = torch.sigmoid(torch.randn(3, generator=gen))
        xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        w = (1.0 + 4.0 * foreground_mask(x0)).expand_as(x0)
        per_clip = {}
        for name, caps in (("true", prompts), ("reversed", [time_reversed_caption(p) for p in prompts])):
            v = predict_velocity(pipe, "t2v", xt, s, _encode_text(pipe, "t2v", caps))
            per_clip[name] = ((v - (noise - x0)).pow(2) * w).flatten(1).sum(1) / w.flatten(1).sum(1)
        hinge = torch.relu(0.3 - (per_clip["reversed"] - per_clip["true"]) / per_clip["true"])
        want = plain + 0.7 * (hinge[0] + hinge[2]) / 2
    assert float(hinge[0]) > 0 and float(hinge[2]) > 0  # untrained: both captions predict alike
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sign_contrast(per_clip["true"], per_clip["reversed"], 0.3), hinge)
    # no clip names a direction: the plain loss, with the same draws
    still = ["a red circle", "", "a cyan ring"]
    with torch.no_grad():
        torch.testing.assert_close(
            flow_loss(pipe, "t2v", x0, still, torch.Generator().manual_seed(4), sign_weight=1.0),
            flow_loss(pipe, "t2v", x0, still, torch.Generator().manual_seed(4)))


_CONTRAST_PROMPTS = ["a red circle moving left", "a blue square moving right", "a green star moving up",
                     "a cyan ring moving down"]


def _gap_after_training(steps: int, other_captions: list[str], **contrast) -> float:
    """Train a fresh tiny t2v ``steps`` Adam steps on ``_CONTRAST_PROMPTS`` with ``flow_loss(**contrast)``, then
    return the mean relative loss increase under ``other_captions`` on a fresh noise draw (s = 0.7)."""
    from dit_attn.pipelines.shapes.train import _encode_text, predict_velocity

    pipe = _tiny_t2v(seed=1)
    x0 = torch.randn(4, pipe.transformer.config.in_channels, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam([p for m in (pipe.transformer, pipe.text_encoder) for p in m.parameters()], lr=3e-3)
    for step in range(steps):
        loss = flow_loss(pipe, "t2v", x0, _CONTRAST_PROMPTS, torch.Generator().manual_seed(100 + step), **contrast)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))
        xt, s = 0.3 * x0 + 0.7 * noise, torch.full((4,), 0.7)
        err = [(predict_velocity(pipe, "t2v", xt, s, _encode_text(pipe, "t2v", caps)) - (noise - x0))
               .pow(2).flatten(1).mean(1) for caps in (_CONTRAST_PROMPTS, other_captions)]
    return float(((err[1] - err[0]) / err[0]).mean())


# slow: 40 optimiser steps; the hinge's definition is tested fast above
@pytest.mark.slow
def test_sign_contrast_training_makes_the_reversed_caption_predict_worse():
    """20 optimiser steps with the contrast open a loss gap between a clip's caption and its time-reversed one on a
    fresh noise draw; the same steps without it leave the gap near zero."""
    from dit_attn.pipelines.shapes.train import time_reversed_caption

    reversed_ = [time_reversed_caption(p) for p in _CONTRAST_PROMPTS]
    gaps = {w: _gap_after_training(20, reversed_, sign_weight=w, sign_margin=0.2) for w in (1.0, 0.0)}
    assert gaps[1.0] > 0.1 and abs(gaps[0.0]) < 0.02, gaps


def test_colour_and_sign_contrasts_add_one_hinge_each_over_the_clips_they_change():
    """Built from the definition: both contrasts in one call are the plain loss plus each hinge's weighted mean over
    the clips its captions change; the colour-swapped captions are drawn from the generator after the noise."""
    from dit_attn.pipelines.shapes.train import (_encode_text, colour_swapped_caption, predict_velocity,
                                                 time_reversed_caption)

    pipe = _tiny_t2v()
    c = pipe.transformer.config.in_channels
    x0 = torch.randn(3, c, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    prompts = ["a red circle moving left", "", "a small blue cross and a pink square moving down"]
    with torch.no_grad():
        got = flow_loss(pipe, "t2v", x0, prompts, torch.Generator().manual_seed(4), fg_weight=4.0,
                        sign_weight=0.7, sign_margin=0.3, colour_weight=0.5, colour_margin=0.4)
        plain = flow_loss(pipe, "t2v", x0, prompts, torch.Generator().manual_seed(4), fg_weight=4.0)
        gen = torch.Generator().manual_seed(4)
        noise = torch.randn(x0.shape, generator=gen)
        s = torch.sigmoid(torch.randn(3, generator=gen))
        swapped = [colour_swapped_caption(p, gen) for p in prompts]
        xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        w = (1.0 + 4.0 * foreground_mask(x0)).expand_as(x0)
        per_clip = {}
        for name, caps in (("true", prompts), ("reversed", [time_reversed_caption(p) for p in prompts]),
                           ("swapped", swapped)):
            v = predict_velocity(pipe, "t2v", xt, s, _encode_text(pipe, "t2v", caps))
            per_clip[name] = ((v - (noise - x0)).pow(2) * w).flatten(1).sum(1) / w.flatten(1).sum(1)
        rel = {k: (per_clip[k] - per_clip["true"]) / per_clip["true"] for k in ("reversed", "swapped")}
        sign_hinge, colour_hinge = torch.relu(0.3 - rel["reversed"]), torch.relu(0.4 - rel["swapped"])
        want = plain + 0.7 * (sign_hinge[0] + sign_hinge[2]) / 2 + 0.5 * (colour_hinge[0] + colour_hinge[2]) / 2
    assert swapped[1] == "" and swapped[0] != prompts[0] and swapped[2].split()[3:] == prompts[2].split()[3:5] + \
        swapped[2].split()[5:]
    assert float(colour_hinge[0]) > 0 and float(colour_hinge[2]) > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# slow: 40 optimiser steps; the hinge's definition is tested fast above
@pytest.mark.slow
def test_colour_contrast_training_makes_the_colour_swapped_caption_predict_worse():
    """40 optimiser steps with the colour contrast open a loss gap between a clip's caption and a colour-swapped
    one (fresh noise, swaps not drawn in training); the same steps without it leave the gap near zero. (Seven
    wrong colours per word are harder than one reversed direction: 20 steps open only 0.1-0.3%.)"""
    from dit_attn.pipelines.shapes.train import colour_swapped_caption

    swapped = [colour_swapped_caption(p, torch.Generator().manual_seed(7)) for p in _CONTRAST_PROMPTS]
    gaps = {w: _gap_after_training(40, swapped, colour_weight=w, colour_margin=0.5) for w in (1.0, 0.0)}
    assert gaps[1.0] > 0.2 and abs(gaps[0.0]) < 0.02, gaps


def test_sign_contrast_errors(tmp_path):
    from dit_attn.pipelines.shapes.train import TrainConfig

    with pytest.raises(ValueError, match="t2v loss"):
        TrainConfig(kind="t2i", out=str(tmp_path / "o"), work=str(tmp_path / "w"), sign_weight=1.0)
    with pytest.raises(ValueError, match="sign_margin > 0"):
        TrainConfig(kind="t2v", out=str(tmp_path / "o"), work=str(tmp_path / "w"), sign_weight=1.0, sign_margin=0.0)
    with pytest.raises(ValueError, match="colour_margin > 0"):
        TrainConfig(kind="t2v", out=str(tmp_path / "o"), work=str(tmp_path / "w"), colour_weight=1.0, colour_margin=0.0)
    assert not (tmp_path / "o").exists()


# slow tier: a decoder fine-tune; the option's refusals stay fast
@pytest.mark.slow
def test_decoder_only_vae_training_keeps_the_latents_and_changes_the_decoder(tmp_path):
    from dit_attn.pipelines.shapes.train import _Log, decoder_parameters, train_vae

    vae = vae_wan(seed=4)
    x = _clips(seed=7)
    with torch.no_grad():
        z_before = encode_mean(vae, x)
    encoder_before = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant"))}
    decoder_before = [p.detach().clone() for p in decoder_parameters(vae)]
    train_vae("t2v", vae, str(tmp_path), 1e-9, 0, 1, _Log(str(tmp_path / "log.jsonl")), None, crop=0,
              fg_weight=4.0, decoder_only=True, lr=1e-3, latent_noise=0.1)  # one step, then the scores
    for k, v in vae.state_dict().items():
        if k in encoder_before:
            torch.testing.assert_close(v, encoder_before[k], rtol=0, atol=0, msg=k)
    assert any((p - q).abs().max() > 0 for p, q in zip(decoder_parameters(vae), decoder_before))
    assert is_framewise(vae)
    with torch.no_grad():
        torch.testing.assert_close(encode_mean(vae.eval(), x), z_before, rtol=0, atol=0)


def test_decoder_only_needs_a_trained_vae(tmp_path):
    from dit_attn.pipelines.shapes.train import TrainConfig

    with pytest.raises(ValueError, match="init_from"):
        TrainConfig(kind="t2v", out=str(tmp_path / "out"), vae_minutes=1.0, vae_decoder_only=True)
    with pytest.raises(ValueError, match="vae_minutes > 0"):
        TrainConfig(kind="t2v", out=str(tmp_path / "out"), vae_minutes=0.0, init_from="some/pipeline",
                    vae_decoder_only=True)


# slow: a whole CLI run on the bundled t2v; decoder-only training and the flag mapping are tested fast
@pytest.mark.slow
def test_cli_decoder_fine_tune_of_an_exported_pipeline_keeps_its_encoder_and_transformer(tmp_path):
    """``train --init-from DIR --vae-decoder-only --vae-minutes M --minutes M``: the VAE phase runs on the exported
    pipeline's VAE (not skipped as for a plain --init-from), the flow phase gets no time, and the export is the
    input pipeline with a new decoder."""
    from safetensors.torch import load_file

    from dit_attn.pipelines.shapes import bundled
    from dit_attn.pipelines.shapes.train import main

    src, out = bundled.model_dir("t2v"), tmp_path / "out"
    main(["--kind", "t2v", "--init-from", src, "--vae-decoder-only", "--vae-minutes", "0.002", "--minutes", "0.002",
          "--vae-crop", "0", "--vae-lr", "5e-4", "--vae-latent-noise", "0.1", "--cache-size", "4", "--eval-n", "0",
          "--work", str(tmp_path / "work"), "--out", str(out)])

    def weights(root, part):
        return load_file(os.path.join(root, part, "diffusion_pytorch_model.safetensors"))

    before, after = weights(src, "vae"), weights(out, "vae")
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert decoder and any(not torch.equal(before[k], after[k]) for k in decoder)
    for k in before.keys() - set(decoder):
        assert torch.equal(before[k], after[k]), k
    t_before, t_after = weights(src, "transformer"), weights(out, "transformer")
    assert all(torch.equal(t_before[k], t_after[k]) for k in t_before)
    with open(out / "training_log.jsonl") as f:
        phases = [json.loads(line)["phase"] for line in f]
    assert "vae_done" in phases and "flow" not in phases


def test_latent_std_is_the_scale_the_pipelines_normalise_by():
    from dit_attn.pipelines.shapes.models import vae_kl
    from dit_attn.pipelines.shapes.train import latent_std

    wan = vae_wan(seed=0)
    wan.register_to_config(latents_std=[0.5, 1.0, 2.0, 4.0])
    torch.testing.assert_close(latent_std(wan).flatten(), torch.tensor([0.5, 1.0, 2.0, 4.0]))
    assert latent_std(wan).shape == (1, 4, 1, 1, 1)  # broadcasts over [B, C, F, H, W] latents
    kl = vae_kl(seed=0)
    kl.register_to_config(scaling_factor=0.25)
    assert float(latent_std(kl)) == 4.0


def test_train_config_takes_the_kind_defaults_and_the_cli_maps_flags_to_fields(monkeypatch):
    """Defaults live in TrainConfig alone: the CLI passes only the flags given, under the field names."""
    from dit_attn.pipelines.shapes import train as train_module

    config = train_module.TrainConfig(kind="t2v", out="o")
    assert (config.minutes, config.vae_minutes, config.batch, config.cache_size) == (40.0, 8.0, 16, 8000)
    assert config.work == os.path.join("outputs", "shapes_train", "t2v") and config.lr == 5e-4
    with pytest.raises(ValueError, match="unknown ShapesWorld kind"):
        train_module.TrainConfig(kind="t3v", out="o")
    with pytest.raises(ValueError, match="batch, cache_size"):
        train_module.TrainConfig(kind="t2i", out="o", batch=0)
    seen = []
    monkeypatch.setattr(train_module, "train", seen.append)
    train_module.main(["--kind", "t2v", "--out", "o", "--time-reverse", "0.5", "--vae-minutes", "0", "--device",
                       "cpu", "--resume"])
    assert seen == [train_module.TrainConfig(kind="t2v", out="o", time_reverse_p=0.5, vae_minutes=0.0, device="cpu",
                                             resume=True)]
    with pytest.raises(SystemExit):  # a bad combination is a usage error, before anything runs
        train_module.main(["--kind", "t2i", "--out", "o", "--time-reverse", "0.5", "--device", "cpu"])
