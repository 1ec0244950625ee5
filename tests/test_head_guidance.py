"""SoftPAG: exact no-op, identity heads, dense (1-u)A + uA_target references, diffusers' SD3 PAG, the guidance
formula on every family, composition, step windows, batched vs sequential, mode="uncond"."""

import numpy as np
import pytest
import torch

import dit_attn
from dit_attn import COND, UNCOND, SoftPAG
from dit_attn.call import execute
from dit_attn.controls.head_guidance import perturb_output
from dit_attn.families import FAMILIES as FAMILY_DATA
from dit_attn.testing import FAMILIES, cpu_threads, tiny_call_kwargs, tiny_pipeline

HEADS = {  # include FLUX / HunyuanVideo single-stream blocks and HunyuanVideo's padded text mask
    "sd3": "transformer_blocks.1:1; transformer_blocks.0:0",
    "flux": "transformer_blocks.1:0; single_transformer_blocks.1:1",
    "wan": "blocks.1:1",
    "hunyuan_video": "transformer_blocks.0:1; single_transformer_blocks.1:0",
    "cogvideox": "transformer_blocks.1:0",
}
for _name, _family in FAMILY_DATA.items():  # the others: head 1 of block 1 of the last block list, head 0 of block 0
    _lists = list(dict.fromkeys(site.block_list for site in _family.sites))
    HEADS.setdefault(_name, f"{_lists[-1]}.1:1; {_lists[0]}.0:0")
# SoftPAG refuses these families by name (their transformer takes lists of per-item latents).
SOFTPAG_REFUSED = {name for name, f in FAMILY_DATA.items() if f.batch_as_list}
SOFTPAG_FAMILIES = [f for f in FAMILIES if f not in SOFTPAG_REFUSED]
# The pipeline's own guidance is plain CFG, switched by tiny_call_kwargs(guidance=...): the formula test applies.
# (Qwen-Image rescales the CFG result to the cond norm; HunyuanVideo 1.5's CFG is its guider component.)
PLAIN_CFG = [f for f in SOFTPAG_FAMILIES if f not in ("qwenimage", "hunyuan_video15")]


def _cfg_scale(family: str) -> float:
    kwargs = tiny_call_kwargs(family)
    return kwargs.get("true_cfg_scale", kwargs.get("guidance_scale"))


def test_softpag_refuses_list_batched_families_by_name():
    for family in SOFTPAG_REFUSED:
        pipe = tiny_pipeline(family)
        with pytest.raises(ValueError, match=f"SoftPAG does not support the '{family}' family"):
            dit_attn.attach(pipe, SoftPAG(HEADS[family]))
        assert not any(isinstance(p, dit_attn.DitAttnProcessor)
                       for p in dit_attn.families.processors_of(pipe.transformer).values())


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


def _out(result):
    return np.asarray(result.images if hasattr(result, "images") else result.frames, dtype=np.float64)


def _sample(output):
    return output[0] if isinstance(output, (tuple, list)) else output.sample


class Calls(dit_attn.Control):
    """Attached *before* SoftPAG: its finish runs last, so it sees the perturbed output."""

    def __init__(self):
        self.calls = []

    def finish(self, call, out):
        self.calls.append((call, out.detach().clone()))
        return out


class Tap(dit_attn.Control):
    """Attached *after* SoftPAG: sees the extended inputs and the raw outputs (perturbed rows included)."""

    def __init__(self):
        self.forwards = []

    def before_forward(self, state, args, kwargs):
        self.forwards.append({"step": state.step_index, "roles": tuple(state.batch_roles), "kwargs": dict(kwargs)})
        return args, kwargs

    def after_forward(self, state, output):
        self.forwards[-1]["out"] = _sample(output).detach().double().clone()
        return output


def _record_steps(pipe):
    steps, original = [], pipe.scheduler.step

    def step(*args, **kwargs):
        steps.append(args[0].detach().double().clone())
        return original(*args, **kwargs)

    pipe.scheduler.step = step
    return steps


def _perturbed(calls, pag):
    return [(c, o) for c, o in calls if c.layout.kind not in ("cross", "cross_image") and pag._heads_of(c.layout)]


# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", SOFTPAG_FAMILIES)
def test_off_is_stock_and_adds_no_rows(family):
    pipe = tiny_pipeline(family)
    stock = _out(pipe(**tiny_call_kwargs(family)))
    for kw in (dict(strength=0.0), dict(scale=0.0), dict(steps=(0.5, 0.5)), dict(strength=0.0, mode="uncond")):
        tap = Tap()
        with dit_attn.attach(pipe, SoftPAG(HEADS[family], **kw), tap):
            out = _out(pipe(**tiny_call_kwargs(family)))
        assert np.array_equal(out, stock), kw
        assert all(set(f["roles"]) <= {COND, UNCOND} for f in tap.forwards)


@pytest.mark.parametrize("family", SOFTPAG_FAMILIES)
def test_all_scope_u1_gives_v_and_leaves_the_rest(family):
    pipe = tiny_pipeline(family)
    pag, calls = SoftPAG(HEADS[family], strength=1.0), Calls()
    with dit_attn.attach(pipe, calls, pag):
        pipe(**tiny_call_kwargs(family, steps=1))
    checked = 0
    for call, out in _perturbed(calls.calls, pag):
        heads = pag._heads_of(call.layout)
        rows = call.layout.rows(pag.role)
        stock = execute(call)
        mask = torch.zeros(out.shape[0], 1, out.shape[2], 1, dtype=torch.bool)
        if rows:
            mask[rows[0]:rows[-1] + 1, :, heads] = True
        mask = mask.expand_as(out)
        assert torch.equal(out[mask], call.value[mask])  # exactly V
        assert torch.equal(out[~mask], stock[~mask])  # everything else untouched
        checked += bool(rows)
    assert checked >= len(HEADS[family].split(";"))


def _dense(call, rows, heads, u, scope):
    """((1-u)A + u A_target) V with every map materialised, in float64."""
    q, k, v = (t.double() for t in (call.query, call.key, call.value))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * call.effective_scale
    bias = torch.zeros_like(logits)
    if call.attn_mask is not None:
        m = call.attn_mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        m = torch.zeros(m.shape, dtype=torch.float64).masked_fill(~m, float("-inf")) if m.dtype == torch.bool \
            else m.double()
        bias = bias + m
    # Rows with every key masked (HunyuanVideo 1.5's padded context queries) give zeros, as SDPA does.
    a = torch.softmax(logits + bias, -1).nan_to_num(0.0)
    nq = logits.shape[-1]
    lay = call.layout
    if scope == "all" or "text" not in lay.key_segments or "image" not in lay.query_segments:
        target = torch.eye(nq, dtype=torch.float64).expand_as(a)
    else:
        img, txt = lay.query_slice("image"), lay.key_slice("text")
        allowed = torch.zeros(nq, nq, dtype=torch.bool)
        allowed[img, txt] = True
        allowed[range(img.start, img.stop), range(img.start, img.stop)] = True
        t_logits = (logits + bias).masked_fill(~allowed, float("-inf"))
        target = a.clone()
        target[:, :, img] = torch.softmax(t_logits[:, :, img], -1).nan_to_num(0.0)
    mixed = a.clone()
    for r in rows:
        for h in heads:
            mixed[r, h] = (1 - u) * a[r, h] + u * target[r, h]
    return torch.einsum("bhqk,bkhd->bqhd", mixed, v)


@pytest.mark.parametrize("family", SOFTPAG_FAMILIES)
@pytest.mark.parametrize("scope", ["all", "image"])
def test_map_free_equals_dense_reference(family, scope):
    pipe = tiny_pipeline(family)
    pag, calls = SoftPAG(HEADS[family], strength=0.6, scope=scope), Calls()
    with dit_attn.attach(pipe, calls, pag):
        pipe(**tiny_call_kwargs(family, steps=1))
    checked = 0
    for call, out in _perturbed(calls.calls, pag):
        rows, heads = call.layout.rows(pag.role), pag._heads_of(call.layout)
        if not rows:
            continue
        ref = _dense(call, rows, heads, 0.6, scope)
        call64 = call.replace(query=call.query.double(), key=call.key.double(), value=call.value.double())
        ours64 = perturb_output(call64, _dense(call, [], [], 0.0, scope), rows, heads, 0.6, scope, chunk=7)
        assert (ours64 - ref).abs().max() < 1e-10
        assert (out.double() - ref).abs().max() < 2e-5  # the fp32 runtime output
        checked += 1
    assert checked >= len(HEADS[family].split(";"))
    if family == "hunyuan_video":  # the padded text mask really masks something
        assert any(c.attn_mask is not None and not bool(c.attn_mask.all()) for c, _ in calls.calls)


@pytest.mark.parametrize("block", [0, 1])
def test_image_scope_equals_diffusers_sd3_pag(block):
    # diffusers' PAG processors skip QK-norm and assume a context, so this SD3 config has neither qk-norm nor
    # SD3.5's dual-attention attn2.
    from diffusers import StableDiffusion3PAGPipeline

    pipe = tiny_pipeline("sd3", qk_norm=None, dual_attention_layers=())
    with dit_attn.attach(pipe, SoftPAG(f"transformer_blocks.{block}:*", strength=1.0, scale=2.5, scope="image")):
        ours = _out(pipe(**tiny_call_kwargs("sd3", steps=3)))
    components = {k: v for k, v in pipe.components.items() if k not in ("image_encoder", "feature_extractor")}
    pag = StableDiffusion3PAGPipeline(**components, pag_applied_layers=[f"blocks.{block}"])
    pag.set_progress_bar_config(disable=True)
    ref = _out(pag(**tiny_call_kwargs("sd3", steps=3), pag_scale=2.5))
    stock = _out(pipe(**tiny_call_kwargs("sd3", steps=3)))
    assert np.abs(ours - ref).max() <= 1e-5
    assert np.abs(stock - ref).max() > 1e-3  # the comparison is not vacuous


def _check_formula(tap, steps, roles_w, g):
    by_step = {}
    for f in tap.forwards:
        by_step.setdefault(f["step"], []).append(f)
    assert len(by_step) == len(steps)
    for (i, fs), pred in zip(sorted(by_step.items()), steps):
        def rows(role):
            parts = [f["out"][[j for j, r in enumerate(f["roles"]) if r == role]] for f in fs]
            return torch.cat([p for p in parts if len(p)])
        cond = rows(COND)
        expected = cond if g is None else rows(UNCOND) + g * (cond - rows(UNCOND))
        for role, w in roles_w:
            expected = expected + w * (cond - rows(role))
        assert (pred - expected).abs().max() <= 1e-5 * (1 + expected.abs().max()), i


@pytest.mark.parametrize("family", PLAIN_CFG)
@pytest.mark.parametrize("cfg", [True, False])
def test_guidance_formula_and_composition(family, cfg):
    pipe = tiny_pipeline(family)
    steps = _record_steps(pipe)
    a = SoftPAG(HEADS[family], strength=0.8, scale=2.0)
    b = SoftPAG(HEADS[family].split(";")[0], strength=1.0, scale=0.7, scope="image")
    tap = Tap()
    with dit_attn.attach(pipe, a, b, tap):
        pipe(**tiny_call_kwargs(family, steps=2, guidance=cfg))
    assert "step" not in pipe.scheduler.__dict__ or pipe.scheduler.__dict__["step"].__name__ == "step"
    _check_formula(tap, steps, [(a.role, 2.0), (b.role, 0.7)], _cfg_scale(family) if cfg else None)
    for f in tap.forwards:
        n_cond = f["roles"].count(COND)
        assert f["roles"].count(a.role) == f["roles"].count(b.role) == n_cond
        if n_cond and family in ("flux", "hunyuan_video"):  # distilled guidance embedding copied unchanged
            gd = f["kwargs"]["guidance"]
            assert gd.shape[0] == len(f["roles"]) and torch.equal(gd, gd[:1].expand_as(gd))


def test_step_window_boundaries():
    pipe = tiny_pipeline("sd3")
    for n, window, active in ((10, (0.3, 0.6), {3, 4, 5}), (3, (0.3, 0.6), {1}), (3, (0.0, 1 / 3), {0})):
        pag, tap = SoftPAG("transformer_blocks.1:0", steps=window), Tap()
        with dit_attn.attach(pipe, pag, tap):
            pipe(**tiny_call_kwargs("sd3", steps=n))
        seen = {f["step"] for f in tap.forwards if pag.role in f["roles"]}
        assert seen == active and len(tap.forwards) == n
        assert all(len(f["roles"]) == 2 for f in tap.forwards if f["step"] not in active)


def test_batched_equals_sequential_reference():
    """The batched prediction equals three separate transformer calls (uncond, cond, perturbed cond)."""
    pipe = tiny_pipeline("sd3")
    kw = tiny_call_kwargs("sd3", steps=1)
    steps = _record_steps(pipe)
    pag = SoftPAG("transformer_blocks.1:*; transformer_blocks.0:1", strength=0.7, scale=1.5, scope="image")
    tap = Tap()
    with dit_attn.attach(pipe, pag, tap):
        pipe(**kw)
    inputs = tap.forwards[0]["kwargs"]
    roles = tap.forwards[0]["roles"]

    def rows_of(role):
        idx = [j for j, r in enumerate(roles) if r == role]
        return {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}

    t = pipe.transformer
    with torch.no_grad():
        uncond = _sample(t(**rows_of(UNCOND)))
        cond = _sample(t(**rows_of(COND)))

        class AllRows(dit_attn.Control):  # perturb every row of a separate forward, same heads
            def applies_to(self, layout):
                return bool(pag._heads_of(layout))

            def finish(self, call, out):
                return perturb_output(call, out, list(range(out.shape[0])), pag._heads_of(call.layout), 0.7, "image")

        with dit_attn.attach(t, AllRows()):
            pert = _sample(t(**rows_of(COND)))
    expected = uncond + 5.0 * (cond - uncond) + 1.5 * (cond - pert)
    assert (steps[0].float() - expected).abs().max() <= 1e-5


def test_uncond_mode_perturbs_the_uncond_pass():
    for family in ("sd3", "flux"):
        pipe = tiny_pipeline(family)
        steps = _record_steps(pipe)
        pag, calls, tap = SoftPAG(HEADS[family], strength=1.0, mode="uncond"), Calls(), Tap()
        with dit_attn.attach(pipe, calls, pag, tap):
            pipe(**tiny_call_kwargs(family, steps=2))
        assert all(set(f["roles"]) <= {COND, UNCOND} for f in tap.forwards)  # no extra rows
        _check_formula(tap, steps, [], _cfg_scale(family))  # ε_{u,pert} + g(ε_c − ε_{u,pert}): the pipeline's own
        n = 0
        for call, out in _perturbed(calls.calls, pag):
            for r in call.layout.rows(UNCOND):
                for h in pag._heads_of(call.layout):
                    assert torch.equal(out[r, :, h], call.value[r, :, h])
                    n += 1
            for r in call.layout.rows(COND):
                assert torch.equal(out[r], execute(call)[r])
        assert n > 0
        with dit_attn.attach(pipe, SoftPAG(HEADS[family], mode="uncond")):
            with pytest.raises(ValueError, match="classifier-free guidance"):
                pipe(**tiny_call_kwargs(family, steps=1, guidance=False))


def test_detach_restores_scheduler_and_bad_arguments():
    pipe = tiny_pipeline("sd3")
    with dit_attn.attach(pipe, SoftPAG("transformer_blocks.0:0")):
        pipe(**tiny_call_kwargs("sd3", steps=1))
        assert "step" in pipe.scheduler.__dict__
    assert "step" not in pipe.scheduler.__dict__
    with pytest.raises(ValueError, match="has no block 5"):
        dit_attn.attach(pipe, SoftPAG("transformer_blocks.5:0"))
    assert "step" not in pipe.scheduler.__dict__
    for bad in (dict(strength=1.5), dict(scope="text"), dict(mode="x"), dict(steps=(0.6, 0.2)), dict(scale=float("nan"))):
        with pytest.raises(ValueError):
            SoftPAG("transformer_blocks.0:0", **bad)
    ctl, = dit_attn.controls_from_config({"softpag": {"heads": "transformer_blocks.0:*", "strength": 0.5,
                                                      "scope": "joint"}})
    assert isinstance(ctl, SoftPAG) and ctl.heads == dit_attn.HeadSet.parse("transformer_blocks.0:*")
