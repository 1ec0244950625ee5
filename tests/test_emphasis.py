"""Emphasis: exact no-op at w = 1, dense reference on every family, CFG branches, rows, layers, schedule, modes."""

import math

import numpy as np
import pytest
import torch

import dit_attn
from dit_attn.prompt import pipeline_text_weights, text_layout_of
from dit_attn.testing import FAMILIES, cpu_threads, tiny_call_kwargs, tiny_pipeline

PROMPT = "a (red:2.5) circle above a [blue] square"
NEGATIVE = "(blurry:0.5), dark, low quality"


def _out(result):
    return np.asarray(result.images if hasattr(result, "images") else result.frames, dtype=np.float64)


class _After(dit_attn.Control):
    """Records each call after the controls before it prepared it, and the output after execute."""

    def __init__(self):
        self.calls = []

    def prepare(self, call):
        self.calls.append([call, None])
        return call

    def finish(self, call, out):
        self.calls[-1][1] = out
        return out


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_one_is_stock(family):
    pipe = tiny_pipeline(family)
    if family in EMPHASIS_REFUSED:  # text laid out per row: refused by name, nothing left attached
        assert text_layout_of(pipe) is None
        with pytest.raises(ValueError, match=f"Emphasis does not support {type(pipe).__name__}"):
            dit_attn.attach(pipe, dit_attn.Emphasis())
        assert not any(isinstance(p, dit_attn.DitAttnProcessor)
                       for p in dit_attn.families.processors_of(pipe.transformer).values())
        return
    stock = _out(pipe(**tiny_call_kwargs(family)))
    kwargs = tiny_call_kwargs(family)
    kwargs["prompt"] = "a (red:1) circle above a blue square"
    with dit_attn.attach(pipe, dit_attn.Emphasis()):
        out = _out(pipe(**kwargs))
    assert np.abs(out - stock).max() == 0


# Families whose text sequence is laid out per row (Z-Image's caption lists, HunyuanVideo 1.5's reordered
# context): Emphasis refuses their pipelines by name (test_weight_one_is_stock checks the refusal).
EMPHASIS_REFUSED = {"z_image", "hunyuan_video15"}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in EMPHASIS_REFUSED])
def test_attention_mode_equals_dense_reference(family):
    pipe = tiny_pipeline(family)
    kwargs = tiny_call_kwargs(family, steps=2)
    kwargs["prompt"] = PROMPT
    if "negative_prompt" in kwargs:
        kwargs["negative_prompt"] = NEGATIVE
    recorder = _After()
    with dit_attn.attach(pipe, dit_attn.Emphasis(), recorder):
        pipe(**kwargs)
    enc = dict(max_sequence_length=kwargs.get("max_sequence_length"), prompt_template=kwargs.get("prompt_template"))
    prompts = {"cond": PROMPT, "uncond": NEGATIVE if "negative_prompt" in kwargs else ""}
    checked = 0
    for call, out in recorder.calls:
        layout = call.layout
        if "text" not in layout.key_segments:
            assert call.key_bias is None
            continue
        start, stop = layout.key_segments["text"]
        logits = torch.einsum("bqhd,bkhd->bhqk", call.query.double(), call.key.double()) * call.effective_scale
        if call.attn_mask is not None:
            mask = call.attn_mask
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
        rows = layout.query_slice("image")
        for b, role in enumerate(layout.batch_roles):
            expected = pipeline_text_weights(pipe, prompts[role], length=stop - start, **enc)
            log_w = torch.log(expected.double())
            if call.key_bias is None:  # no weighted token in this forward (FLUX.2 Klein's empty uncond prompt)
                assert bool((expected == 1).all())
                continue
            assert torch.equal(call.key_bias[b, 0, start:stop].double(), log_w.to(call.key_bias.dtype).double())
            logits[b, :, rows, start:stop] += log_w
        ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), call.value.double())
        assert (out.double() - ref).abs().max() < 1e-5, layout.module_name
        checked += 1
    assert checked > 0


def test_text_rows_untouched_and_all_queries_option():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    q, k, v = (torch.randn(2, 12, 2, 8, generator=g) for _ in range(3))
    segs = {"image": (0, 8), "text": (8, 12)}
    state = dit_attn.ForwardState(family="sd3", batch_roles=("cond", "cond"))
    layout = dit_attn.Layout(family="sd3", site=None, kind="joint", heads=2, head_dim=8, query_segments=segs,
                             key_segments=segs, batch_size=2, state=state)
    for queries in ("image", "all"):
        control = dit_attn.Emphasis(queries=queries)
        state.extra[id(control)] = torch.tensor([[1.0, 3.0, 1.0, 0.0]])
        call = control.prepare(dit_attn.AttentionCall(q, k, v, layout))
        out = dit_attn.execute(call)
        plain = dit_attn.execute(dit_attn.AttentionCall(q, k, v, layout))
        text_diff = (out[:, 8:] - plain[:, 8:]).abs().max()
        assert (text_diff <= 1e-6) if queries == "image" else (text_diff > 1e-4)
        assert (out[:, :8] - plain[:, :8]).abs().max() > 1e-4


def test_zero_weight_removes_the_key():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    q, k, v = (torch.randn(1, 10, 2, 8, generator=g) for _ in range(3))
    segs = {"image": (0, 6), "text": (6, 10)}
    state = dit_attn.ForwardState(family="flux")
    layout = dit_attn.Layout(family="flux", site=None, kind="joint", heads=2, head_dim=8, query_segments=segs,
                             key_segments=segs, batch_size=1, state=state)
    control = dit_attn.Emphasis(queries="all")
    state.extra[id(control)] = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    out = dit_attn.execute(control.prepare(dit_attn.AttentionCall(q, k, v, layout)))
    keep = [i for i in range(10) if i != 7]
    ref = dit_attn.execute(dit_attn.AttentionCall(q, k[:, keep], v[:, keep], layout))
    assert (out - ref).abs().max() < 1e-6


def test_layers_schedule_and_bad_fields():
    pipe = tiny_pipeline("flux")
    kwargs = tiny_call_kwargs("flux", guidance=False)
    kwargs["prompt"] = PROMPT
    recorder = _After()
    with dit_attn.attach(pipe, dit_attn.Emphasis(layers=["single_transformer_blocks"], schedule=lambda p: 1 - p),
                         recorder):
        pipe(**kwargs)
    for call, _ in recorder.calls:
        if call.layout.block_list != "single_transformer_blocks":
            assert call.key_bias is None
        else:
            start, _ = call.layout.key_segments["text"]
            peak = call.key_bias[0, 0].max().item()
            assert peak == pytest.approx(math.log(2.5) * (1 - call.layout.progress), rel=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        dit_attn.Emphasis(mode="loud")
    with pytest.raises(ValueError, match="queries must be one of"):
        dit_attn.Emphasis(queries="text")


@pytest.mark.parametrize("mode", ["embedding-a1111", "embedding-comfy"])
def test_embedding_modes_change_the_output(mode):
    pipe = tiny_pipeline("sd3")
    stock = _out(pipe(**tiny_call_kwargs("sd3")))
    kwargs = tiny_call_kwargs("sd3")
    kwargs["prompt"] = PROMPT
    with dit_attn.attach(pipe, dit_attn.Emphasis(mode=mode)):
        out = _out(pipe(**kwargs))
    assert np.isfinite(out).all() and np.abs(out - stock).max() > 1e-4


def test_composes_with_entropy_scale():
    pipe = tiny_pipeline("flux")
    kwargs = tiny_call_kwargs("flux")
    kwargs["prompt"] = PROMPT
    recorder = _After()
    with dit_attn.attach(pipe, dit_attn.Emphasis(), dit_attn.EntropyScale(train_tokens=16), recorder):
        pipe(**kwargs)
    call = recorder.calls[0][0]
    assert call.key_bias is not None and call.logit_scale != 1.0


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_composes_with_softpag_in_either_order(family):
    """SoftPAG's perturbed rows copy the cond rows, so they get the cond rows' weights, whichever control comes
    first; the result does not depend on the attach order."""
    pipe = tiny_pipeline(family)
    heads = "transformer_blocks.0:0"
    outs = []
    for order in ("emphasis-first", "softpag-first"):
        emphasis, pag = dit_attn.Emphasis(), dit_attn.SoftPAG(heads, strength=1.0, scale=2.0)
        recorder = _After()
        controls = (emphasis, pag) if order == "emphasis-first" else (pag, emphasis)
        kwargs = tiny_call_kwargs(family, steps=2)
        kwargs["prompt"] = PROMPT
        with dit_attn.attach(pipe, *controls, recorder):
            outs.append(_out(pipe(**kwargs)))
        checked = 0
        for call, _ in recorder.calls:
            roles = call.layout.batch_roles
            if call.key_bias is None or not any(r.startswith("perturbed") for r in roles):
                continue
            bias = call.key_bias.expand(len(roles), -1, -1)
            cond = [i for i, r in enumerate(roles) if r == "cond"]
            pert = [i for i, r in enumerate(roles) if r.startswith("perturbed")]
            assert len(cond) == len(pert)
            for c, p in zip(cond, pert):
                assert torch.equal(bias[c], bias[p])
            assert (bias[pert[0]] != 0).any()
            checked += 1
        assert checked
    assert np.abs(outs[0] - outs[1]).max() <= 1e-6
