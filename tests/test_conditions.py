"""MultiCondition (PKA): fast paths vs the dense token-group oracle, keyword location, KSA masks, the condition
cache and the control on the tiny FLUX pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dit_attn
from dit_attn.conditions import attention as A
from dit_attn.conditions.keywords import KeywordNotFoundError, keyword_positions, keyword_weights
from dit_attn.conditions.tokens import ConditionTokens, aligned_index, spatial_ids, subject_ids
from dit_attn.testing import cpu_threads, tiny_call_kwargs, tiny_pipeline, tiny_tokenizer

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):
        yield


def _rand(gen, *shape, grad=False):
    t = torch.randn(*shape, generator=gen, dtype=F64)
    return t.requires_grad_(grad)


def _case(seed, n_sp=2, n_sj=2, grid=(4, 6), cond_grids=None, masks="random", batch=2, heads=2, dim=8, text=5,
          grad=False):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    q, k, v = (_rand(g, batch, text + n, heads, dim, grad=grad) for _ in range(3))
    cond_grids = cond_grids or [grid] * n_sp
    spatial = []
    for cg in cond_grids[:n_sp]:
        m = cg[0] * cg[1]
        spatial.append(A.SpatialKV(_rand(g, batch, m, heads, dim, grad=grad), _rand(g, batch, m, heads, dim, grad=grad),
                                   aligned_index(grid, cg)))
    subjects = []
    for j in range(n_sj):
        m = 3 + 2 * j
        if masks == "random":
            mask = torch.rand(batch, n, generator=g) > 0.4
        elif masks == "empty":
            mask = torch.zeros(batch, n, dtype=torch.bool)
        elif masks == "full":
            mask = torch.ones(batch, n, dtype=torch.bool)
        else:
            mask = None
        subjects.append(A.SubjectKV(_rand(g, batch, m, heads, dim, grad=grad), _rand(g, batch, m, heads, dim, grad=grad),
                                    mask))
    return q, k, v, spatial, subjects, text


# --- attention math vs the oracle ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,combine,text_sees", [("pka", "joint", False), ("pka", "joint", True),
                                                    ("pka", "sum", False), ("cached-full", "joint", False),
                                                    ("cached-full", "joint", True)])
@pytest.mark.parametrize("n_sp,n_sj", [(1, 0), (0, 1), (3, 0), (2, 2), (4, 1)])
def test_fast_path_equals_dense_oracle(mode, combine, text_sees, n_sp, n_sj):
    seed = n_sp * 10 + n_sj
    grids = [(4, 6), (2, 3), (8, 12), (4, 6)]  # same grid, half, double, same
    q, k, v, sp, sj, t = _case(seed, n_sp, n_sj, cond_grids=grids)
    kw = dict(text_len=t, spatial=sp, subjects=sj, mode=mode, combine=combine, text_sees_conditions=text_sees)
    fast = A.condition_attention(q, k, v, **kw)
    ref = A.dense_oracle(q, k, v, **kw)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["pka", "cached-full"])
@pytest.mark.parametrize("rows", ["image", "text", "all"])
def test_key_bias_on_some_rows_equals_dense_oracle(mode, rows):
    """A key bias on the call's own keys (prompt emphasis) applied to some query rows only, e.g. image rows:
    the fast path equals one dense masked softmax with the bias added to exactly those rows' own-key logits."""
    q, k, v, sp, sj, t = _case(21, 2, 1, cond_grids=[(4, 6), (2, 3)])
    b, tx = q.shape[:2]
    bias = torch.randn(b, 1, tx, generator=torch.Generator().manual_seed(2), dtype=F64)
    sl = {"image": slice(t, None), "text": slice(0, t), "all": None}[rows]
    fast = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj, mode=mode, key_bias=bias,
                                 key_bias_rows=sl)
    conds = sp + sj
    keys = torch.cat([k] + [c.key for c in conds], dim=1)
    values = torch.cat([v] + [c.value for c in conds], dim=1)
    mask = A.group_mask(b, t, tx - t, [c.key.shape[1] for c in sp], [c.index for c in sp],
                        [c.key.shape[1] for c in sj], [c.mask for c in sj], mode)[:, :tx]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, keys) * q.shape[-1] ** -0.5
    full_bias = torch.zeros_like(logits)
    full_bias[:, :, sl if sl is not None else slice(None), :tx] = bias[:, :, None, :]
    probs = torch.softmax((logits + full_bias).masked_fill(~mask[:, None], float("-inf")), dim=-1)
    ref = torch.einsum("bhqk,bkhd->bqhd", probs, values)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    if rows != "all":  # and the rows outside get no bias at all
        plain = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj, mode=mode)
        other = slice(0, t) if rows == "image" else slice(t, None)
        torch.testing.assert_close(fast[:, other], plain[:, other], rtol=1e-12, atol=1e-12)
        assert (fast[:, sl] - plain[:, sl]).abs().max() > 1e-3


@pytest.mark.parametrize("masks", ["empty", "full", None])
def test_ksa_empty_full_and_unmasked(masks):
    q, k, v, sp, sj, t = _case(3, 1, 2, masks=masks)
    for combine in ("joint", "sum"):
        fast = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj, combine=combine)
        ref = A.dense_oracle(q, k, v, text_len=t, spatial=sp, subjects=sj, combine=combine)
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    if masks == "empty":  # an empty mask is the same as no subject
        no_subject = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=[])
        torch.testing.assert_close(A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj), no_subject)


def test_merged_lse_is_the_joint_logsumexp():
    q, k, v, sp, sj, t = _case(5, 2, 1)
    _, lse = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj, return_lse=True)
    b = q.shape[0]
    keys = torch.cat([k] + [c.key for c in sp + sj], dim=1)
    mask = A.group_mask(b, t, q.shape[1] - t, [s.key.shape[1] for s in sp], [s.index for s in sp],
                        [s.key.shape[1] for s in sj], [s.mask for s in sj], "pka")[:, :q.shape[1]]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, keys) * q.shape[-1] ** -0.5
    ref = torch.logsumexp(logits.masked_fill(~mask[:, None], float("-inf")), dim=-1)
    torch.testing.assert_close(lse, ref, rtol=1e-12, atol=1e-12)


def test_paa_single_extra_key_update_is_exact():
    g = torch.Generator().manual_seed(7)
    q, k, v = (_rand(g, 1, 6, 1, 4) for _ in range(3))
    kc, vc = _rand(g, 1, 6, 1, 4), _rand(g, 1, 6, 1, 4)
    out, lse = A.attention_lse(q, k, v, 0.5)
    merged, lse2 = A.paa_merge(out, lse, q, [A.SpatialKV(kc, vc, torch.arange(6))], 0.5)
    s = (q * kc).sum(-1).transpose(1, 2) * 0.5  # [B, H, N]
    # ring-attention form: out' = out - sigmoid(s - lse)·(out - v)
    ring = out - torch.sigmoid(s - lse).unsqueeze(-1) * (out - vc.transpose(1, 2))
    torch.testing.assert_close(merged, ring, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse2, lse - torch.nn.functional.logsigmoid(lse - s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,combine", [("pka", "joint"), ("pka", "sum"), ("cached-full", "joint")])
def test_gradients_equal_dense_oracle(mode, combine):
    q, k, v, sp, sj, t = _case(11, 2, 1, cond_grids=[(4, 6), (2, 3)], grad=True)
    leaves = [q, k, v] + [x for c in sp + sj for x in (c.key, c.value)]
    g = torch.randn(q.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    kw = dict(text_len=t, spatial=sp, subjects=sj, mode=mode, combine=combine)
    # (combine="sum" never uses spatial keys: a softmax over one aligned key is V whatever the key)
    fast = torch.autograd.grad((A.condition_attention(q, k, v, **kw) * g).sum(), leaves, allow_unused=True)
    ref = torch.autograd.grad((A.dense_oracle(q, k, v, **kw) * g).sum(), leaves, allow_unused=True)
    for leaf, a, b in zip(leaves, fast, ref):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert fast[0].abs().sum() > 0 and fast[-1].abs().sum() > 0


def test_cpu_flash_path_matches_fp32_oracle():
    q, k, v, sp, sj, t = _case(13, 2, 2)
    f32 = lambda x: x.float()  # noqa: E731
    sp32 = [A.SpatialKV(f32(s.key), f32(s.value), s.index) for s in sp]
    sj32 = [A.SubjectKV(f32(s.key), f32(s.value), s.mask) for s in sj]
    fast = A.condition_attention(f32(q), f32(k), f32(v), text_len=t, spatial=sp32, subjects=sj32)
    ref = A.dense_oracle(q, k, v, text_len=t, spatial=sp, subjects=sj)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-5)


def test_alignment_and_ids():
    assert aligned_index((4, 4), (4, 4)).tolist() == list(range(16))
    idx = aligned_index((4, 6), (2, 3)).view(4, 6)
    assert idx[0].tolist() == [0, 0, 1, 1, 2, 2] and idx[3].tolist() == [3, 3, 4, 4, 5, 5]
    ids = spatial_ids((2, 3), (4, 6))
    assert ids[:, 1].unique().tolist() == [0.5, 2.5] and ids[:, 2].unique().tolist() == [0.5, 2.5, 4.5]
    same = spatial_ids((4, 6), (4, 6))
    assert same[:, 1].tolist() == [r for r in range(4) for _ in range(6)]
    assert subject_ids((2, 3), 1)[:, 2].unique().tolist() == [-6.0, -5.0, -4.0]


# --- KSA mask ----------------------------------------------------------------------------------------------------
def test_keyword_scores_and_mask_follow_the_definition():
    g = torch.Generator().manual_seed(2)
    b, n, t, h, d = 2, 10, 6, 3, 4
    q, k = torch.randn(b, n, h, d, generator=g), torch.randn(b, t, h, d, generator=g)
    w = torch.zeros(b, t)
    w[0, [1, 4]] = 1
    w[1, [2]] = 1
    scores = A.keyword_scores(q, k, w)
    for r in range(b):
        for i in range(n):
            ref = sum(float(q[r, i, hh] @ k[r, tt, hh]) for hh in range(h) for tt in range(t) if w[r, tt]) / h
            assert abs(float(scores[r, i]) - ref) < 1e-5
    m = A.keyword_mask(scores, 0.2)
    for r in range(b):
        s = scores[r]
        assert torch.equal(m[r], (s - s.min()) / (s.max() - s.min()) >= 0.2)
    assert A.keyword_mask(scores, 0.0).all() and A.keyword_mask(scores, 1.0).sum(-1).tolist() == [1, 1]
    assert not A.keyword_mask(scores, 1.5).any()
    assert A.keyword_mask(torch.ones(1, 5), 0.9).all()  # constant scores: full mask, no NaN


# --- keywords ----------------------------------------------------------------------------------------------------
def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "a": 2, "zo": 3, "##rb": 4, "and": 5, "red": 6, "circle": 7, "the": 8}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def test_keyword_positions_multi_token_repeated_and_subword():
    tok = tiny_tokenizer("t5", 16)
    assert keyword_positions(tok, "a red circle and a red square", "red", max_length=16) == [1, 5]
    assert keyword_positions(tok, "a red circle and a red square", "RED square", max_length=16) == [5, 6]
    assert keyword_positions(tok, "a red circle and a reddish square", "red", max_length=16) == [1]
    wp = _wordpiece_tokenizer()
    assert wp.tokenize("a zorb and the zorb") == ["a", "zo", "##rb", "and", "the", "zo", "##rb"]
    assert keyword_positions(wp, "a zorb and the zorb", "zorb", max_length=10) == [1, 2, 5, 6]
    w = keyword_weights(wp, ["a zorb", "the red zorb"], "zorb", max_length=8, repeat=2)
    assert w.shape == (4, 8) and w[0].nonzero().flatten().tolist() == [1, 2] and \
        w[3].nonzero().flatten().tolist() == [2, 3]


def test_keyword_errors():
    tok = tiny_tokenizer("t5", 8)
    with pytest.raises(KeywordNotFoundError, match="does not occur"):
        keyword_positions(tok, "a red circle", "zorb", max_length=8)
    with pytest.raises(KeywordNotFoundError, match="beyond the first 3"):
        keyword_positions(tok, "a red circle above a blue square", "square", max_length=3)
    with pytest.raises(ValueError, match="non-empty"):
        keyword_positions(tok, "a red circle", " ", max_length=8)


# --- the control on the tiny FLUX pipeline -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("flux")


def _img(seed, h=48, w=64):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _run(pipe, control, **overrides):
    kw = tiny_call_kwargs("flux")
    kw.update(overrides)
    if control is None:
        return pipe(**kw).images
    with dit_attn.attach(pipe, *(control if isinstance(control, list) else [control])):
        return pipe(**kw).images


def test_no_conditions_equals_stock(pipe):
    stock = _run(pipe, None)
    np.testing.assert_array_equal(_run(pipe, dit_attn.MultiCondition()), stock)


def test_composes_with_image_row_emphasis(pipe):
    """Prompt emphasis on image rows (a row-restricted key bias) shares the attention call with the conditions:
    weight 1 is the conditions alone, other weights change the output; both attach orders agree."""
    conditions = dict(spatial=[_img(0)], subjects=[(_img(1, 32, 32), "circle")])
    alone = _run(pipe, dit_attn.MultiCondition(**conditions))
    neutral = _run(pipe, [dit_attn.MultiCondition(**conditions), dit_attn.Emphasis(queries="image")],
                   prompt="a (red:1.0) circle above a blue square")
    np.testing.assert_allclose(neutral, alone, atol=1e-6)
    weighted = [_run(pipe, controls, prompt="a (red:2.0) circle above a blue square")
                for controls in ([dit_attn.MultiCondition(**conditions), dit_attn.Emphasis(queries="image")],
                                 [dit_attn.Emphasis(queries="image"), dit_attn.MultiCondition(**conditions)])]
    assert np.abs(weighted[0] - alone).max() > 1e-4
    np.testing.assert_allclose(weighted[0], weighted[1], atol=1e-6)


def test_conditions_change_the_output_and_cache_reports_memory(pipe):
    stock = _run(pipe, None)
    control = dit_attn.MultiCondition(spatial=[_img(0)], subjects=[(_img(1, 32, 32), "circle")])
    out = _run(pipe, control)
    assert np.abs(out - stock).max() > 1e-4
    rep = control.cache_report()
    t = pipe.transformer
    layers = len(t.transformer_blocks) + len(t.single_transformer_blocks)
    inner = t.config.num_attention_heads * t.config.attention_head_dim
    assert rep["layers"] == layers and rep["conditions"] == 2 and rep["tokens"] == {0: 48, 1: 48}
    assert rep["bytes"] == 2 * layers * 2 * 48 * inner * 4  # conditions x layers x (K, V) x tokens x width x fp32
    assert control._state["writes"] == 1  # one write pass per call, despite true CFG (2 forwards per step)


def test_cached_equals_recomputed_write_pass(pipe):
    conds = dict(spatial=[_img(0), dit_attn.SpatialCondition(_img(2), scale=0.5)], subjects=[(_img(1), "square")])
    kw = dict(true_cfg_scale=1.0, negative_prompt=None, num_inference_steps=3)
    cached = _run(pipe, dit_attn.MultiCondition(**conds), **kw)
    fresh = dit_attn.MultiCondition(**conds, cache=False)
    recomputed = _run(pipe, fresh, **kw)
    assert fresh._state["writes"] == 3
    np.testing.assert_allclose(cached, recomputed, rtol=0, atol=1e-6)


def test_write_pass_keys_equal_a_stock_forward_of_the_condition_alone(pipe):
    control = dit_attn.MultiCondition(spatial=[_img(3)], mode="cached-full")
    kw = {**tiny_call_kwargs("flux"), "true_cfg_scale": 1.0, "negative_prompt": None, "num_inference_steps": 1}
    with dit_attn.attach(pipe, control):
        pipe(**kw)
        prepared = next(iter(control._state["encoded"].values()))[0]
        cached = {layer: control._kv.get(layer, 0) for layer in control._kv.layers}
    # the same condition alone through the stock transformer: t = 0, no text, the prompt's pooled embedding
    rec = dit_attn.Recorder(keep_tensors=True)
    with torch.no_grad():
        _, pooled, _ = pipe.encode_prompt(kw["prompt"], None, max_sequence_length=kw["max_sequence_length"])
    with dit_attn.attach(pipe.transformer, rec), torch.no_grad():
        pipe.transformer(hidden_states=prepared.tokens.tokens, encoder_hidden_states=torch.zeros(1, 0, pipe.transformer.config.joint_attention_dim),
                         pooled_projections=pooled, timestep=torch.zeros(1), img_ids=prepared.tokens.ids,
                         txt_ids=torch.zeros(0, 3), guidance=torch.full((1,), kw["guidance_scale"]),
                         return_dict=False)
    assert len(rec.tensors) == len(cached) == 5
    for layer, (_, k, v) in enumerate(rec.tensors):
        torch.testing.assert_close(cached[layer][0], k, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cached[layer][1], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,combine", [("pka", "joint"), ("pka", "sum"), ("cached-full", "joint")])
def test_model_level_fast_path_equals_oracle(pipe, monkeypatch, mode, combine):
    from dit_attn.controls import conditions as C

    conds = dict(spatial=[_img(0), dit_attn.SpatialCondition(_img(2), scale=0.5)],
                 subjects=[(_img(1), "circle"), (_img(4), "blue square")], mode=mode, combine=combine, epsilon=0.3)
    fast_control = dit_attn.MultiCondition(**conds)
    fast = _run(pipe, fast_control, num_images_per_prompt=2, num_inference_steps=3)
    seen = []

    def oracle(q, k, v, *, key_bias=None, key_bias_rows=None, **kw):
        assert key_bias is None
        seen.append([s.mask for s in kw["subjects"]])
        return A.dense_oracle(q, k, v, **kw)

    monkeypatch.setattr(C, "condition_attention", oracle)
    ref = _run(pipe, dit_attn.MultiCondition(**conds), num_images_per_prompt=2, num_inference_steps=3)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-5)
    if mode == "pka":
        # first step unmasked; later steps masked with the previous step's mask, batch rows kept apart
        per_forward = 5  # layers
        assert all(m is None for call in seen[:2 * per_forward] for m in call)  # step 0: cond + uncond
        later = [m for call in seen[2 * per_forward:] for m in call]
        assert later and all(m is not None and m.shape == (2, 48) for m in later)


def test_ksa_mask_is_reused_one_step_later(pipe):
    control = dit_attn.MultiCondition(subjects=[(_img(1), "circle")], epsilon=0.5)
    used, made = [], []
    attend = control.attend

    def spy(call):
        layer = call.layout.layer_index
        if control._state["writing"] is None and layer == 2 and control._state["masks_prev"] is not None:
            used.append(control._state["masks_prev"].get(layer, {}).get(0))
        out = attend(call)
        if control._state["writing"] is None and layer == 2:
            made.append(control._state["masks_cur"].get(layer, {}).get(0))
        return out

    control.attend = spy
    _run(pipe, control, true_cfg_scale=1.0, negative_prompt=None, num_inference_steps=3)
    assert used[0] is None and all(u is not None for u in used[1:])
    for step in (1, 2):
        assert torch.equal(used[step], made[step - 1])
    assert any(not bool(m.all()) for m in made)  # epsilon 0.5 really masks rows


class _Capture(dit_attn.Control):
    def __init__(self):
        self.calls = []

    def before_forward(self, state, args, kwargs):
        self.calls.append(dict(kwargs))
        return args, kwargs


def test_concat_mode_equals_a_stock_forward_on_concatenated_tokens(pipe):
    control = dit_attn.MultiCondition(spatial=[_img(0)], subjects=[(_img(1), "circle")], mode="concat")
    capture = _Capture()  # after MultiCondition: sees the forward's arguments as it changed them
    kw = {**tiny_call_kwargs("flux"), "true_cfg_scale": 1.0, "negative_prompt": None, "num_inference_steps": 1,
          "output_type": "latent"}
    with dit_attn.attach(pipe, control, capture):
        latents = pipe(**kw).images
    call = capture.calls[0]
    assert len(capture.calls) == 1  # no write pass in concat mode
    assert call["hidden_states"].shape[1] == 48 * 3 and call["img_ids"].shape[0] == 48 * 3
    transformer = pipe.transformer
    with torch.no_grad():  # stock processors: one full joint attention over all tokens
        full = type(transformer).forward(transformer, **call)[0]
    sigma = pipe.scheduler.sigmas
    x0 = call["hidden_states"][:, :48]
    torch.testing.assert_close(latents, x0 + (sigma[1] - sigma[0]) * full[:, :48], rtol=1e-5, atol=1e-5)


def test_batch_of_prompts_keyword_rows(pipe):
    control = dit_attn.MultiCondition(subjects=[(_img(1), "circle")])
    kw = {**tiny_call_kwargs("flux"), "negative_prompt": None, "true_cfg_scale": 1.0,
          "prompt": ["a red circle above a blue square", "a blue square and a green circle"]}
    with dit_attn.attach(pipe, control):
        out = pipe(**kw).images
        w = control._state["keywords"][0]
        masks = control.keyword_masks(3)
    assert out.shape[0] == 2 and masks[0].shape == (2, 48)
    assert w[0].nonzero().flatten().tolist() != w[1].nonzero().flatten().tolist()


def test_errors(pipe):
    with pytest.raises(ValueError, match="mode must be one of"):
        dit_attn.MultiCondition(mode="full")
    with pytest.raises(ValueError, match="pka only"):
        dit_attn.MultiCondition(mode="cached-full", combine="sum")
    with pytest.raises(TypeError, match=r"\(image, keyword\) pairs"):
        dit_attn.MultiCondition(subjects=[_img(0)])
    with pytest.raises(ValueError, match="aspect"):
        _run(pipe, dit_attn.MultiCondition(spatial=[_img(0, 64, 64)]))
    with pytest.raises(TypeError, match="PIL image or a tensor"):
        _run(pipe, dit_attn.MultiCondition(spatial=[np.zeros((48, 64, 3))]))
    with pytest.raises(ValueError, match="3 channels"):
        _run(pipe, dit_attn.MultiCondition(spatial=[torch.zeros(4, 48, 64)]))
    with pytest.raises(ValueError, match="'zorb' does not occur"):
        _run(pipe, dit_attn.MultiCondition(subjects=[(_img(1), "zorb")]))
    with pytest.raises(ValueError, match="FLUX-architecture"):
        with dit_attn.attach(tiny_pipeline("sd3"), dit_attn.MultiCondition(spatial=[_img(0)])):
            pass
    with pytest.raises(ValueError, match="2 tokens for a 3x3 grid"):
        ConditionTokens(torch.zeros(1, 2, 4), (3, 3))


def test_bench_measures_every_mode_in_process():
    from dit_attn.conditions import bench

    args = bench._parser().parse_args(["--heads", "2", "--head-dim", "8", "--text", "4", "--image", "16",
                                       "--cond-tokens", "4", "--repeats", "1"])
    results = [bench.measure_one(m, c, args) for c in (1, 2) for m in bench.BENCH_MODES]
    assert all(r["ms"] > 0 and r["input_bytes"] > 0 for r in results)
    text = bench.table(results)
    assert text.count("\n") == 3 and "concat/pka" in text


def test_block_sparse_ksa_path_skips_blocks_and_matches_math():
    # The CUDA path (block-sparse LUT: query blocks without a kept row get no key block); on CPU tensors
    # block_sparse_attention runs its reference with the same LUT semantics.
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (20, 7, 7))
    rows = torch.zeros(2, 20, dtype=torch.bool)
    rows[0, [1, 2, 13]] = True  # query blocks 0 and 3 (of 4 rows each) kept, 1, 2, 4 skipped
    rows[1, :] = True
    out, lse = A._kernel(q, k, v, 0.3, None, rows, block=4)
    lse = lse.masked_fill(~rows[:, None], float("-inf"))
    ref_out, ref_lse = A.attention_lse(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.3, row_mask=rows)
    keep = rows[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out.float()[keep], ref_out[keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, ref_lse)
    assert torch.isneginf(lse[0, :, 4:12]).all()  # skipped blocks: no key at all


@pytest.mark.parametrize("rows", [slice(3, 9), slice(0, 5), slice(4, 11), slice(1, 10, 2)])
def test_own_attention_biases_only_the_given_rows(rows):
    """The row-restricted key bias (contiguous slices take a path with no index tensors) against an fp64 dense
    computation: biased logits on the rows of ``rows`` only."""
    from dit_attn.conditions.attention import _own_attention

    g = torch.Generator().manual_seed(3)
    b, n, nk, h, d = 2, 11, 7, 2, 8
    q, k, v = (torch.randn(b, m, h, d, generator=g) for m in (n, nk, nk))
    bias = torch.randn(b, 1, nk, generator=g)
    out, lse = _own_attention(q, k, v, 0.3, bias, rows)
    logits = torch.einsum("bnhd,bkhd->bhnk", q.double(), k.double()) * 0.3
    on = torch.zeros(n, dtype=torch.bool)
    on[rows] = True
    logits = logits + torch.where(on[None, None, :, None], bias.double()[:, :, None, :], torch.zeros(()))
    ref_lse = torch.logsumexp(logits, dim=-1)
    ref = torch.einsum("bhnk,bkhd->bhnd", torch.softmax(logits, dim=-1), v.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-5)
