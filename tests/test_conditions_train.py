"""Condition-adapter training on the tiny FLUX pipeline: CSAS sampling, LoRA gradients under the mode's masks vs
the dense oracle, loss decreasing on a fixed batch, exact resume, the folder dataset and the CLI."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("peft")  # a declared dependency of the `train` and `test` extras

from dit_attn.conditions import attention as A  # noqa: E402
from dit_attn.pipelines.conditions import train as T  # noqa: E402
from dit_attn.testing import cpu_threads, tiny_pipeline  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


def test_csas_sampling_direction_and_logit_normal():
    g = torch.Generator().manual_seed(0)
    csas = T.sample_sigmas(50_000, "csas", g)
    ln = T.sample_sigmas(50_000, "logit_normal", g)
    z = torch.logit(csas.double())
    assert abs(float(z.mean()) - 0.5) < 0.03 and abs(float(z.std()) - 1.5) < 0.03  # t = sigmoid(0.5 + 1.5 z)
    assert float(csas.mean()) > 0.55 and abs(float(ln.mean()) - 0.5) < 0.01  # CSAS leans to noise (t = 1)
    with pytest.raises(ValueError, match="sampling must be one of"):
        T.sample_sigmas(2, "uniform", g)


def _batch(condition, n=2, size=32):
    ds = T._ShapesAdapter(condition, size, 16, 0)
    return T._collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("condition,mode", [("edge", "pka"), ("subject", "pka"), ("edge", "cached-full")])
def test_lora_gradients_equal_dense_oracle(monkeypatch, condition, mode):
    from dit_attn.controls import conditions as C

    pipe = tiny_pipeline("flux")
    cfg = T.TrainConfig(output_dir="", condition=condition, mode=mode, size=32, rank=4, epsilon=0.3)
    params = T.add_condition_adapter(pipe.transformer, cfg)
    with torch.no_grad():  # non-zero B so that every LoRA parameter has a gradient
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch(condition)

    def grads():
        trainer = T.ConditionTrainer(pipe, cfg)
        try:
            loss = trainer.loss(batch, torch.Generator().manual_seed(3))
            # (the last layer's condition queries feed nothing the cache keeps: their LoRA gets no gradient)
            return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            trainer.close()

    loss_fast, g_fast = grads()
    monkeypatch.setattr(C, "condition_attention",
                        lambda q, k, v, *, key_bias=None, key_bias_rows=None, **kw: A.dense_oracle(q, k, v, **kw))
    loss_ref, g_ref = grads()
    torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-5, atol=1e-7)
    used = [i for i, g in enumerate(g_fast) if g is not None]
    assert len(used) >= len(params) - 2 and [i for i, g in enumerate(g_ref) if g is not None] == used
    assert sum(float(g_fast[i].abs().sum()) for i in used) > 0
    for i in used:
        torch.testing.assert_close(g_fast[i], g_ref[i], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("latent_lora", [False, True])
def test_denoise_pass_uses_the_condition_adapter_only_when_latent(latent_lora):
    pipe = tiny_pipeline("flux")
    cfg = T.TrainConfig(output_dir="", size=32, rank=4, latent_lora=latent_lora)
    params = T.add_condition_adapter(pipe.transformer, cfg)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn_like(p))
    trainer = T.ConditionTrainer(pipe, cfg)
    seen = []
    attend = trainer.control.attend

    layer = pipe.transformer.single_transformer_blocks[0].attn.to_q

    def spy(call):
        active = [a for a in layer.active_adapters if not layer.disable_adapters]
        seen.append((trainer.control._state["writing"], active))
        return attend(call)

    trainer.control.attend = spy
    try:
        trainer.loss(_batch("edge"), torch.Generator().manual_seed(0))
    finally:
        trainer.close()
    assert seen and all(active == ["condition"] for w, active in seen if w is not None)  # write pass: on
    denoise = [active for w, active in seen if w is None]
    assert denoise and all(active == (["condition"] if latent_lora else []) for active in denoise)
    assert layer.active_adapters == ["condition"] and not layer.disable_adapters  # restored afterwards


def test_loss_decreases_on_a_fixed_batch():
    pipe = tiny_pipeline("flux")
    cfg = T.TrainConfig(output_dir="", size=32, rank=8, learning_rate=2e-2)
    torch.manual_seed(0)
    params = T.add_condition_adapter(pipe.transformer, cfg)
    opt = torch.optim.Adam(params, lr=cfg.learning_rate)
    trainer = T.ConditionTrainer(pipe, cfg)
    batch = _batch("edge")
    losses = []
    try:
        for _ in range(15):
            loss = trainer.loss(batch, torch.Generator().manual_seed(5))  # same noise and t every step
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        trainer.close()
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


@torch.no_grad()
def test_object_weight_is_a_weighted_mean_over_object_tokens(monkeypatch):
    pipe = tiny_pipeline("flux")
    batch = _batch("subject", n=3)
    t = torch.tensor([0.3, 0.6, 0.9])

    def losses(weight):
        cfg = T.TrainConfig(output_dir="", condition="subject", size=32, rank=4, object_weight=weight)
        trainer = T.ConditionTrainer(pipe, cfg)
        try:
            x0 = trainer._latent_tokens(batch["image"]).tokens
            pred = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
            got = trainer.loss(batch, torch.Generator().manual_seed(4), model=lambda **kw: (pred,), t=t)
        finally:
            trainer.close()
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))  # t given: noise is the first draw
        return got, x0, (pred - (noise - x0)).pow(2)

    plain, x0, err = losses(0.0)
    torch.testing.assert_close(plain, err.mean())
    # the tiny model's random VAE gives unnormalised latents: a threshold that splits its tokens
    deviation = (x0 - x0.median(dim=1, keepdim=True).values).abs().mean(-1)
    threshold = float(deviation.median())
    object_tokens = T.object_tokens
    monkeypatch.setattr(T, "object_tokens", lambda x: object_tokens(x, threshold))
    weighted, _, _ = losses(4.0)
    objects = object_tokens(x0, threshold)
    assert 0.2 < objects.float().mean() < 0.8  # the sprite and the shape, not the background
    per_token = err.mean(-1, keepdim=True)
    w = 1.0 + 4.0 * objects.float()
    torch.testing.assert_close(weighted, (per_token * w).sum() / w.sum())
    assert not torch.allclose(weighted, plain)
    with pytest.raises(ValueError, match="object_weight must be >= 0"):
        T.TrainConfig(output_dir="", object_weight=-1.0)


def test_train_resumes_exactly(tmp_path):
    def run(out, steps):
        cfg = T.TrainConfig(output_dir=str(out), steps=steps, batch_size=1, size=32, rank=4, save_every=2,
                            learning_rate=1e-3, dataset_length=16)
        return T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)

    full = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4)
    assert len(full["losses"]) == 4 and len(resumed["losses"]) == 2 and all(np.isfinite(full["losses"]))
    np.testing.assert_allclose(resumed["losses"], full["losses"][2:], rtol=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(full["adapter"]), load_file(resumed["adapter"])
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    assert json.load(open(tmp_path / "b" / "state.json"))["step"] == 4
    assert os.path.exists(tmp_path / "b" / "checkpoint-2" / "condition.safetensors")
    assert json.load(open(tmp_path / "b" / "checkpoint-2" / "condition.json"))["rank"] == 4  # self-describing
    # Checkpoints are safetensors + JSON only (a resume unpickles nothing), written through a temporary folder.
    files = sorted(os.listdir(tmp_path / "b" / "checkpoint-2"))
    assert files == ["condition.json", "condition.safetensors", "optimizer.json", "optimizer.safetensors"]
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path / "b"))
    lines = [json.loads(line) for line in open(tmp_path / "b" / "losses.jsonl")]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in lines], full["losses"], rtol=1e-5)


def test_train_resume_ignores_a_half_written_checkpoint_and_rejects_bad_counts(tmp_path):
    def run(steps):
        cfg = T.TrainConfig(output_dir=str(tmp_path), steps=steps, batch_size=1, size=32, rank=4, save_every=2,
                            log_every=3, learning_rate=1e-3, dataset_length=16)
        return T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)

    run(2)
    os.makedirs(tmp_path / "checkpoint-4.tmp")  # a save killed half-way: never a resume point
    resumed = run(4)
    assert len(resumed["losses"]) == 2 and all(np.isfinite(resumed["losses"]))
    assert json.load(open(tmp_path / "checkpoint-4" / "optimizer.json"))["step"] == 4
    with pytest.raises(ValueError, match="log_every must be a positive integer"):
        T.TrainConfig(output_dir=str(tmp_path), log_every=0)
    with pytest.raises(ValueError, match=r"save_every \(3\) must be a multiple of grad_accum \(2\)"):
        T.TrainConfig(output_dir=str(tmp_path), steps=4, save_every=3, grad_accum=2)
    with pytest.raises(ValueError, match="mixed_precision must be"):
        T.TrainConfig(output_dir=str(tmp_path), mixed_precision="fp8")
    # An existing run is never overwritten by a fresh one, and an old-format checkpoint gets a clear error.
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        T.train(T.TrainConfig(output_dir=str(tmp_path), steps=2, batch_size=1, size=32, rank=4, resume=False,
                              dataset_length=16), pipe=tiny_pipeline("flux"), progress=False)
    os.remove(tmp_path / "checkpoint-4" / "optimizer.json")
    with pytest.raises(RuntimeError, match="written by an older dit_attn"):
        run(6)


def test_train_resume_with_gradient_accumulation_gives_the_same_adapter(tmp_path):
    from safetensors.torch import load_file

    def run(out, steps):
        cfg = T.TrainConfig(output_dir=str(out), steps=steps, batch_size=1, size=32, rank=4, save_every=2,
                            grad_accum=2, learning_rate=1e-2, dataset_length=16)
        return T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)

    full = run(tmp_path / "a", 6)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 6)
    np.testing.assert_allclose(resumed["losses"], full["losses"][2:], rtol=1e-5)
    a, b = load_file(full["adapter"]), load_file(resumed["adapter"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    assert json.load(open(tmp_path / "b" / "checkpoint-4" / "condition.json"))["trained_steps"] == 4
    assert json.load(open(tmp_path / "b" / "checkpoint-4" / "optimizer.json"))["accumulation_step"] == 4


@pytest.mark.parametrize("condition", ["edge", "subject"])
def test_cached_latents_train_like_pixels(tmp_path, condition):
    """Training on the pre-encoded dataset gives the losses and adapter of training on pixels; the cache file is
    reused by a second run with the same data settings and rebuilt when they change."""

    def run(out, **kw):
        cfg = T.TrainConfig(output_dir=str(out), condition=condition, steps=3, batch_size=2, size=32, rank=4,
                            save_every=10, learning_rate=1e-3, dataset_length=8, **kw)
        return T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)

    cache = str(tmp_path / "shared" / "latents.safetensors")
    pixels = run(tmp_path / "a")
    cached = run(tmp_path / "b", cache_latents=True, latent_cache=cache)
    np.testing.assert_allclose(cached["losses"], pixels["losses"], rtol=1e-5)
    stamp = os.path.getmtime(cache)
    again = run(tmp_path / "c", cache_latents=True, latent_cache=cache)
    assert os.path.getmtime(cache) == stamp  # reused, not rebuilt
    np.testing.assert_allclose(again["losses"], pixels["losses"], rtol=1e-5)
    meta = json.load(open(cache + ".json"))
    assert len(meta["caption"]) == 8 and meta["key"]["dataset_length"] == 8
    other = T.TrainConfig(output_dir=str(tmp_path / "d"), condition=condition, steps=1, batch_size=2, size=32,
                          rank=4, dataset_length=6, cache_latents=True, latent_cache=cache)
    T.train(other, pipe=tiny_pipeline("flux"), progress=False)
    assert json.load(open(cache + ".json"))["key"]["dataset_length"] == 6  # other settings: rebuilt


def test_folder_dataset_and_cli(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        for kind in ("img", "cond"):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{kind}{i}.png")
        rows.append({"image": f"img{i}.png", "condition": f"cond{i}.png", "caption": "a red circle"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = T.FolderConditionDataset(str(tmp_path), size=32)
    assert len(ds) == 2 and ds[0]["image"].shape == (3, 32, 32) and float(ds[0]["condition"].min()) >= -1
    parser = argparse.ArgumentParser()
    T.add_cli(parser.add_subparsers())
    args = parser.parse_args(["train-conditions", "--pipeline", "tiny-flux", "--output-dir", str(tmp_path / "out"),
                              "--data", str(tmp_path), "--steps", "1", "--batch-size", "1", "--size", "32",
                              "--rank", "2", "--timestep-sampling", "logit_normal"])
    assert args.func(args) == 0
    assert os.path.exists(tmp_path / "out" / "condition.safetensors")
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        T.FolderConditionDataset(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="timestep_sampling"):
        T.TrainConfig(output_dir="x", timestep_sampling="uniform")


def test_trained_adapter_loads_disabled_and_drives_its_condition(tmp_path):
    """An adapter saved by train() loads by file name onto a fresh pipeline (LoRA settings from the JSON beside it),
    leaves ordinary forwards stock, and is what a condition's write pass uses when named."""
    import dit_attn
    from dit_attn.conditions.adapters import adapter_names, load_condition_adapter
    from dit_attn.testing import tiny_call_kwargs

    cfg = T.TrainConfig(output_dir=str(tmp_path / "run"), steps=2, batch_size=1, size=32, rank=4,
                        learning_rate=1e-2, dataset_length=4, adapter_name="edges")
    path = T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)["adapter"]
    assert json.load(open(tmp_path / "run" / "edges.json"))["rank"] == 4

    pipe = tiny_pipeline("flux")
    stock = pipe(**tiny_call_kwargs("flux")).images
    assert load_condition_adapter(pipe.transformer, path) == "edges" and adapter_names(pipe.transformer) == {"edges"}
    np.testing.assert_array_equal(pipe(**tiny_call_kwargs("flux")).images, stock)  # disabled: stock

    cond = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for mode in ("pka", "concat"):  # pka: the adapter acts in the write pass; concat: in the joint forward
        outs = {}
        for adapter in (None, "edges"):
            control = dit_attn.MultiCondition(spatial=[dit_attn.SpatialCondition(cond, adapter=adapter)], mode=mode)
            with dit_attn.attach(pipe, control):
                outs[adapter] = pipe(**tiny_call_kwargs("flux")).images
        assert np.abs(outs["edges"] - outs[None]).max() > 1e-4, mode
        np.testing.assert_array_equal(pipe(**tiny_call_kwargs("flux")).images, stock)  # and it is off again

    # An adapter the user had active (a style LoRA) stays active in ordinary forwards when a condition adapter loads.
    from peft import LoraConfig

    styled = tiny_pipeline("flux")
    styled.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"], init_lora_weights=False),
                                   adapter_name="style")
    with_style = styled(**tiny_call_kwargs("flux")).images
    assert np.abs(with_style - stock).max() > 1e-4
    load_condition_adapter(styled.transformer, path)
    np.testing.assert_array_equal(styled(**tiny_call_kwargs("flux")).images, with_style)
    from dit_attn.conditions.adapters import _tuner_layers, adapter_scope

    layer = _tuner_layers(styled.transformer)[0]
    with adapter_scope(styled.transformer, include={"edges"}):  # concat's joint forward: style and condition
        assert layer.active_adapters == ["style", "edges"] and not layer.disable_adapters
    with adapter_scope(styled.transformer, only="edges"):  # a write pass: the condition's adapter alone
        assert layer.active_adapters == ["edges"]
    assert layer.active_adapters == ["style"]
    styled.transformer.disable_adapters()  # the user switched the style LoRA off: a latent adapter alone comes on
    with adapter_scope(styled.transformer, include={"edges"}):
        assert layer.active_adapters == ["edges"] and not layer.disable_adapters
    assert layer.disable_adapters and layer.active_adapters == ["style"]

    with pytest.raises(FileNotFoundError, match="no condition adapter"):
        load_condition_adapter(pipe.transformer, str(tmp_path / "missing.safetensors"))
    os.remove(tmp_path / "run" / "edges.json")
    with pytest.raises(FileNotFoundError, match="LoRA"):
        load_condition_adapter(pipe.transformer, path, "other")


def test_reloading_an_adapter_name_replaces_its_lora_settings_too(tmp_path):
    """A retrained adapter with another rank and other target modules loads over the old one of the same name
    (fidelity's --mode-adapters does this) and then acts exactly as it does on a fresh pipeline."""
    import dit_attn
    from dit_attn.conditions.adapters import load_condition_adapter
    from dit_attn.testing import tiny_call_kwargs

    paths = {}
    for rank, targets in ((4, ("to_q", "to_k", "to_v", "to_out.0")), (2, ("to_q", "ff.net.2"))):
        cfg = T.TrainConfig(output_dir=str(tmp_path / f"r{rank}"), steps=1, batch_size=1, size=32, rank=rank,
                            target_modules=targets, learning_rate=1e-2, dataset_length=2, adapter_name="edges")
        paths[rank] = T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)["adapter"]
    cond = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def run(pipe):
        control = dit_attn.MultiCondition(spatial=[dit_attn.SpatialCondition(cond, adapter="edges")], mode="pka")
        with dit_attn.attach(pipe, control):
            return pipe(**tiny_call_kwargs("flux")).images

    fresh = tiny_pipeline("flux")
    load_condition_adapter(fresh.transformer, paths[2])
    reloaded = tiny_pipeline("flux")
    load_condition_adapter(reloaded.transformer, paths[4])
    load_condition_adapter(reloaded.transformer, paths[2])
    block = reloaded.transformer.transformer_blocks[0]
    assert block.attn.to_q.lora_A["edges"].weight.shape[0] == 2 and "edges" in block.ff.net[2].lora_A
    assert "edges" not in block.attn.to_k.lora_A  # the old adapter's extra targets are gone
    np.testing.assert_array_equal(run(reloaded), run(fresh))


def test_latent_adapter_equals_the_adapter_active_in_every_forward(tmp_path):
    """A latent_lora adapter (saved, reloaded) acts in the write pass and on the text + image tokens of the
    denoising passes: the same as running the condition without an adapter while that LoRA is active everywhere."""
    import dit_attn
    from dit_attn.conditions.adapters import adapter_scope, latent_adapters, load_condition_adapter, mark_latent_adapter
    from dit_attn.testing import tiny_call_kwargs

    cfg = T.TrainConfig(output_dir=str(tmp_path / "run"), steps=1, batch_size=1, size=32, rank=4,
                        learning_rate=5e-2, dataset_length=2, adapter_name="edges", latent_lora=True)
    path = T.train(cfg, pipe=tiny_pipeline("flux"), progress=False)["adapter"]
    assert json.load(open(tmp_path / "run" / "edges.json"))["latent_lora"] is True

    pipe = tiny_pipeline("flux")
    load_condition_adapter(pipe.transformer, path)
    assert latent_adapters(pipe.transformer) == {"edges"}
    cond = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for mode in ("pka", "cached-full"):
        def run(adapter):
            control = dit_attn.MultiCondition(spatial=[dit_attn.SpatialCondition(cond, adapter=adapter)], mode=mode)
            with dit_attn.attach(pipe, control):
                return pipe(**tiny_call_kwargs("flux")).images

        latent = run("edges")
        with adapter_scope(pipe.transformer, include={"edges"}):  # the oracle: the LoRA on in every forward
            everywhere = run(None)
        np.testing.assert_allclose(latent, everywhere, rtol=0, atol=1e-6)
        mark_latent_adapter(pipe.transformer, "edges", False)  # as an ordinary condition adapter it differs
        write_only = run("edges")
        mark_latent_adapter(pipe.transformer, "edges", True)
        assert np.abs(latent - write_only).max() > 1e-4, mode


def test_adapters_docstring_examples_run():
    import doctest

    from dit_attn.conditions import adapters as adapters_module

    result = doctest.testmod(adapters_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_checkpoint_docstring_example_runs():
    import doctest

    from dit_attn import checkpoint

    result = doctest.testmod(checkpoint)
    assert result.attempted >= 8 and result.failed == 0


def test_edge_augmentation_changes_the_inputs_deterministically():
    """``edge_augment`` swaps a fraction of the edge items (per index, the same every time) for hand drawings with
    the image rendered from the drawn silhouettes; 0 leaves the data as it was; bad settings are refused."""

    def items(prob, styles=("thick", "marker", "sketchy", "canny"), n=16):
        ds = T.make_dataset(T.TrainConfig(output_dir="", size=32, dataset_length=n, edge_augment=prob,
                                          edge_styles=styles))
        return [ds[i] for i in range(n)]

    plain, mixed, again, drawn = items(0.0), items(0.5), items(0.5), items(1.0)
    base = T._ShapesAdapter("edge", 32, 16, 0)
    for a, b in zip(plain, [base[i] for i in range(16)]):
        assert torch.equal(a["condition"], b["condition"]) and torch.equal(a["image"], b["image"])
    for a, b in zip(mixed, again):  # deterministic
        assert torch.equal(a["condition"], b["condition"]) and torch.equal(a["image"], b["image"])
    changed = [not torch.equal(m["condition"], p["condition"]) for m, p in zip(mixed, plain)]
    assert 3 <= sum(changed) <= 13  # a random mix with the rendered outlines
    assert all(not torch.equal(d["condition"], p["condition"]) for d, p in zip(drawn, plain))
    assert all(d["caption"] == p["caption"] for d, p in zip(drawn, plain))
    assert {d["style"] for d in drawn} == {"thick", "marker", "sketchy", "canny"}
    assert {d["style"] for d in items(1.0, ("canny",), n=4)} == {"canny"}
    assert any(not torch.equal(d["image"], p["image"]) for d, p in zip(drawn, plain))  # drawn silhouettes
    batch = T._collate(drawn[:2])
    assert batch["condition"].shape == (2, 3, 32, 32) and float(batch["condition"].abs().max()) == 1.0
    with pytest.raises(ValueError, match="edge_augment needs condition='edge'"):
        T.TrainConfig(output_dir="", condition="subject", edge_augment=0.5)
    with pytest.raises(ValueError, match="edge_styles must be some of"):
        T.TrainConfig(output_dir="", edge_augment=0.5, edge_styles=("crayon",))
    with pytest.raises(ValueError, match="probability"):
        T.TrainConfig(output_dir="", edge_augment=1.5)


def test_augmented_training_caches_its_own_latents_and_starts_from_an_adapter(tmp_path):
    """An augmented run (through the CLI flags) trains on its own latent cache (the key records the augmentation);
    ``init_adapter`` starts from a saved adapter's weights, and a mismatched one is refused."""
    from safetensors.torch import load_file

    first = T.train(T.TrainConfig(output_dir=str(tmp_path / "a"), steps=2, batch_size=2, size=32, rank=4,
                                  learning_rate=1e-2, dataset_length=4), pipe=tiny_pipeline("flux"), progress=False)
    parser = argparse.ArgumentParser()
    T.add_cli(parser.add_subparsers())
    args = parser.parse_args(["train-conditions", "--pipeline", "tiny-flux", "--output-dir", str(tmp_path / "b"),
                              "--steps", "1", "--batch-size", "2", "--size", "32", "--rank", "4", "--dataset-length",
                              "4", "--cache-latents", "true", "--edge-augment", "0.5", "--edge-styles", "thick",
                              "canny", "--init-adapter", first["adapter"], "--learning-rate", "0"])
    assert args.func(args) == 0
    key = json.load(open(tmp_path / "b" / "latent_cache.safetensors.json"))["key"]
    assert key["edge_augment"] == 0.5 and key["edge_styles"] == ["thick", "canny"]
    assert sorted(key["hand_styles"]) == ["canny", "thick"]  # the presets' settings: editing one rebuilds the cache
    saved = json.load(open(tmp_path / "b" / "condition.json"))
    assert saved["edge_augment"] == 0.5 and saved["init_adapter"] == first["adapter"]
    a, b = load_file(first["adapter"]), load_file(str(tmp_path / "b" / "condition.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # learning rate 0: the adapter is the one it started from
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    stamp = os.path.getmtime(tmp_path / "b" / "latent_cache.safetensors")
    assert args.func(parser.parse_args(["train-conditions", "--pipeline", "tiny-flux", "--output-dir",
                                        str(tmp_path / "b"), "--steps", "2", "--batch-size", "2", "--size", "32",
                                        "--rank", "4", "--dataset-length", "4", "--cache-latents", "true",
                                        "--edge-augment", "0.5", "--edge-styles", "thick", "canny"])) == 0
    assert os.path.getmtime(tmp_path / "b" / "latent_cache.safetensors") == stamp  # same settings: reused
    with pytest.raises(ValueError, match="does not match the adapter|another rank"):
        T.train(T.TrainConfig(output_dir=str(tmp_path / "c"), steps=1, batch_size=1, size=32, rank=2,
                              dataset_length=2, init_adapter=first["adapter"]), pipe=tiny_pipeline("flux"),
                progress=False)
