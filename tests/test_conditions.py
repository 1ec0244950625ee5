"""MultiCondition (PKA): fast paths vs the dense token-group oracle, keyword location, KSA masks, the condition
cache and the control on the tiny FLUX.1, Chroma and FLUX.2 pipelines."""

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
FAMILIES = ("flux", "chroma", "flux2")  # the FLUX-architecture families MultiCondition supports


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


def _stock_mask(seed, b, n, kind):
    """Chroma's mask (additive 0/1 outer product of a per-token 0/1 vector), a random additive [B, 1, N, N] one,
    or a boolean one (each row keeps at least its own key)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "chroma":
        m = (torch.rand(b, n, generator=g) > 0.3).to(F64)
        return m[:, None, None, :] * m[:, None, :, None]
    if kind == "additive":
        return torch.randn(b, 1, n, n, generator=g, dtype=F64)
    keep = torch.rand(b, 1, n, n, generator=g) > 0.3
    return keep | torch.eye(n, dtype=torch.bool)


@pytest.mark.parametrize("kind", ["chroma", "additive", "bool"])
@pytest.mark.parametrize("mode,combine,text_sees", [("pka", "joint", False), ("pka", "sum", False),
                                                    ("cached-full", "joint", True), ("pka", "joint", True)])
def test_stock_mask_and_condition_bias_equal_dense_oracle(kind, mode, combine, text_sees):
    """A per-query stock mask on the own keys (Chroma's) plus a per-row bias on every condition key: the fast path
    equals the dense oracle with the same additive bias, in fp64."""
    q, k, v, sp, sj, t = _case(31, 2, 2, cond_grids=[(4, 6), (2, 3)])
    mask = _stock_mask(4, q.shape[0], q.shape[1], kind)
    cb = mask[..., t]  # each row's value against the first image key
    kw = dict(text_len=t, spatial=sp, subjects=sj, mode=mode, combine=combine, text_sees_conditions=text_sees,
              attn_mask=mask, condition_bias=cb)
    fast = A.condition_attention(q, k, v, **kw)
    torch.testing.assert_close(fast, A.dense_oracle(q, k, v, **kw), rtol=1e-10, atol=1e-10)
    plain = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj, mode=mode, combine=combine,
                                  text_sees_conditions=text_sees)
    assert (fast - plain).abs().max() > 1e-3  # the mask really acts


def test_chroma_mask_with_conditions_is_a_mask_extended_by_ones():
    """Conditions count as image tokens under Chroma's mask: cached-full with text rows seeing conditions equals
    one SDPA over ``[T, X, conditions]`` with the 0/1 token vector extended by ones (what concat mode passes)."""
    q, k, v, sp, sj, t = _case(33, 2, 1, cond_grids=[(4, 6), (2, 3)])
    b, tx = q.shape[:2]
    g = torch.Generator().manual_seed(5)
    m = torch.ones(b, tx, dtype=F64)
    m[:, 2:t] = (torch.rand(b, t - 2, generator=g) > 0.5).to(F64)  # some text tokens masked (0)
    mask = m[:, None, None, :] * m[:, None, :, None]
    fast = A.condition_attention(q, k, v, text_len=t, spatial=sp, subjects=sj, mode="cached-full",
                                 text_sees_conditions=True, attn_mask=mask, condition_bias=mask[..., t])
    conds = sp + sj
    keys = torch.cat([k] + [c.key for c in conds], dim=1)
    values = torch.cat([v] + [c.value for c in conds], dim=1)
    ext = torch.cat([m, torch.ones(b, keys.shape[1] - tx, dtype=F64)], dim=1)
    full = ext[:, None, None, :] * ext[:, None, :, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2),
                                                           values.transpose(1, 2), attn_mask=full[:, :, :tx])
    torch.testing.assert_close(fast, ref.transpose(1, 2), rtol=1e-10, atol=1e-10)


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
    # FLUX.2: (T, row, col, L); spatial at T = 0 like the image, subject k at T = 10 (k + 1) on its own grid
    four = spatial_ids((2, 3), (4, 6), layout="flux2")
    assert four.shape == (6, 4) and torch.equal(four[:, 1:3], ids[:, 1:3]) and not four[:, [0, 3]].any()
    sub = subject_ids((2, 3), 1, layout="flux2")
    assert sub[:, 0].unique().tolist() == [20.0] and sub[:, 2].unique().tolist() == [0.0, 1.0, 2.0]
    assert not sub[:, 3].any()


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
_PIPES: dict = {}


def _pipe(family):
    if family not in _PIPES:
        _PIPES[family] = tiny_pipeline(family)
    return _PIPES[family]


@pytest.fixture(scope="module")
def pipe():
    return _pipe("flux")


def _img(seed, h=48, w=64):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _layers(transformer):
    return len(transformer.transformer_blocks) + len(transformer.single_transformer_blocks)


def _run(pipe, control, family="flux", **overrides):
    kw = tiny_call_kwargs(family)
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


def _write_pass_kwargs(pipe, family, kw) -> dict:
    """What the stock forward of a condition alone takes besides its tokens and ids, per family: t = 0, no text;
    FLUX.1 also the prompt's pooled embedding and the distilled guidance; FLUX.2 4-axis (empty) text ids."""
    t = pipe.transformer
    out = dict(encoder_hidden_states=torch.zeros(1, 0, t.config.joint_attention_dim), timestep=torch.zeros(1),
               txt_ids=torch.zeros(0, 4 if family == "flux2" else 3), return_dict=False)
    if family == "flux":
        with torch.no_grad():
            _, pooled, _ = pipe.encode_prompt(kw["prompt"], None, max_sequence_length=kw["max_sequence_length"])
        out.update(pooled_projections=pooled, guidance=torch.full((1,), kw["guidance_scale"]))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_write_pass_keys_equal_a_stock_forward_of_the_condition_alone(family):
    pipe = _pipe(family)
    control = dit_attn.MultiCondition(spatial=[_img(3), dit_attn.SpatialCondition(_img(2), scale=0.5)],
                                      subjects=[(_img(1, 32, 32), "circle")], mode="cached-full")
    kw = {**tiny_call_kwargs(family, steps=1, guidance=False)}
    with dit_attn.attach(pipe, control):
        pipe(**kw)
        prepared = next(iter(control._state["encoded"].values()))
        cached = [{layer: control._kv.get(layer, c) for layer in control._kv.layers} for c in range(len(prepared))]
    assert [p.tokens.ids.shape[1] for p in prepared] == [4 if family == "flux2" else 3] * 3
    # each condition alone through the stock transformer (chroma: no attention mask)
    extra = _write_pass_kwargs(pipe, family, kw)
    for c, p in enumerate(prepared):
        rec = dit_attn.Recorder(keep_tensors=True)
        with dit_attn.attach(pipe.transformer, rec), torch.no_grad():
            pipe.transformer(hidden_states=p.tokens.tokens, img_ids=p.tokens.ids, **extra)
        assert len(rec.tensors) == len(cached[c]) == _layers(pipe.transformer)
        for layer, (_, k, v) in enumerate(rec.tensors):
            torch.testing.assert_close(cached[c][layer][0], k, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cached[c][layer][1], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_conditions_are_encoded_and_packed_like_the_pipelines_latents(family):
    """A condition encodes to the tokens the pipeline's own image path gives the same pixels (FLUX.1/Chroma:
    ``mode()``, shift and scale, 2x2 packing; FLUX.2: its ``_encode_vae_image`` with the latent batch norm)."""
    from dit_attn.conditions.tokens import encode_image

    pipe = _pipe(family)
    pixels = _img(6).unsqueeze(0)
    got = encode_image(pipe, pixels, (6, 8), layout="flux2" if family == "flux2" else "flux")
    with torch.no_grad():
        if family == "flux2":
            lat = pipe.vae.encode(pixels).latent_dist.mode()
            lat = pipe._patchify_latents(lat)
            bn = pipe.vae.bn
            lat = (lat - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) +
                                                                        pipe.vae.config.batch_norm_eps)
            ref = lat.flatten(2).transpose(1, 2)
        else:
            lat = pipe.vae.encode(pixels).latent_dist.mode()
            lat = (lat - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
            ref = pipe._pack_latents(lat, 1, lat.shape[1], lat.shape[2], lat.shape[3])
    assert got.shape == (1, 48, pipe.transformer.config.in_channels)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode,combine", [("pka", "joint"), ("pka", "sum"), ("cached-full", "joint")])
def test_model_level_fast_path_equals_oracle(monkeypatch, family, mode, combine):
    from dit_attn.controls import conditions as C

    pipe = _pipe(family)
    conds = dict(spatial=[_img(0), dit_attn.SpatialCondition(_img(2), scale=0.5)],
                 subjects=[(_img(1), "circle"), (_img(4), "blue square")], mode=mode, combine=combine, epsilon=0.3)
    fast_control = dit_attn.MultiCondition(**conds)
    fast = _run(pipe, fast_control, family, num_images_per_prompt=2, num_inference_steps=3)
    seen, masked = [], []

    def oracle(q, k, v, *, key_bias=None, key_bias_rows=None, **kw):
        assert key_bias is None
        seen.append([s.mask for s in kw["subjects"]])
        masked.append(kw.get("attn_mask") is not None)
        return A.dense_oracle(q, k, v, **kw)

    monkeypatch.setattr(C, "condition_attention", oracle)
    ref = _run(pipe, dit_attn.MultiCondition(**conds), family, num_images_per_prompt=2, num_inference_steps=3)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-5)
    assert all(masked) if family == "chroma" else not any(masked)  # Chroma's text mask reaches every call
    if mode == "pka":
        # first step unmasked; later steps masked with the previous step's mask, batch rows kept apart
        per_forward = _layers(pipe.transformer)
        assert len(seen) == 3 * 2 * per_forward  # 3 steps x (cond + uncond) x layers
        assert all(m is None for call in seen[:2 * per_forward] for m in call)  # step 0: cond + uncond
        later = [m for call in seen[2 * per_forward:] for m in call]
        assert later and all(m is not None and m.shape == (2, 48) for m in later)


def test_chroma_conditions_count_as_image_tokens_under_its_text_mask(monkeypatch):
    """Inside Chroma: cached-full with text rows seeing the conditions equals, at every attention call, one SDPA
    over ``[text, image, conditions]`` with Chroma's 0/1 token vector (the diagonal of its outer-product mask)
    extended by ones for the condition tokens, i.e. what concat mode passes to the stock forward."""
    from dit_attn.controls import conditions as C

    pipe = _pipe("chroma")
    conds = dict(spatial=[_img(0), dit_attn.SpatialCondition(_img(2), scale=0.5)], subjects=[(_img(1), "circle")],
                 mode="cached-full", text_sees_conditions=True)
    fast = _run(pipe, dit_attn.MultiCondition(**conds), "chroma", num_inference_steps=2)
    calls = []

    def reference(q, k, v, *, attn_mask, spatial, subjects, scale, **kw):
        conds = list(spatial) + list(subjects)
        keys = torch.cat([k] + [c.key.expand(k.shape[0], -1, -1, -1) for c in conds], dim=1)
        values = torch.cat([v] + [c.value.expand(v.shape[0], -1, -1, -1) for c in conds], dim=1)
        tokens = torch.diagonal(attn_mask[:, 0], dim1=-2, dim2=-1)  # m_j (m_j^2 = m_j for 0/1)
        tokens = torch.cat([tokens, tokens.new_ones(tokens.shape[0], keys.shape[1] - k.shape[1])], dim=1)
        full = (tokens[:, None, None, :] * tokens[:, None, :, None])[:, :, :q.shape[1]]
        calls.append(bool((tokens == 0).any()))
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2),
                                                               values.transpose(1, 2), attn_mask=full, scale=scale)
        return out.transpose(1, 2)

    monkeypatch.setattr(C, "condition_attention", reference)
    ref = _run(pipe, dit_attn.MultiCondition(**conds), "chroma", num_inference_steps=2)
    assert calls and all(calls)  # masked text tokens in every call
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-5)


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
        self.outputs = []

    def before_forward(self, state, args, kwargs):
        self.calls.append(dict(kwargs))
        return args, kwargs

    def after_forward(self, state, output):
        self.outputs.append(output[0] if isinstance(output, tuple) else output.sample)
        return output


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["pka", "cached-full", "concat"])
def test_every_mode_runs_end_to_end_and_conditions_change_the_output(family, mode):
    """A spatial and a subject condition, true CFG (2 forwards per step), each family's own pipeline."""
    pipe = _pipe(family)
    stock = _run(pipe, None, family)
    control = dit_attn.MultiCondition(spatial=[_img(0)], subjects=[(_img(1, 32, 32), "circle")], mode=mode)
    with dit_attn.attach(pipe, control):
        out = pipe(**tiny_call_kwargs(family)).images
        masks = control.keyword_masks(_layers(pipe.transformer) - 1)
    assert out.shape == stock.shape and np.isfinite(out).all()
    assert np.abs(out - stock).max() > 1e-4
    if mode != "concat":
        rep = control.cache_report()
        assert rep["conditions"] == 2 and rep["layers"] == _layers(pipe.transformer)
        assert control._state["writes"] == 1  # one write pass per call, despite true CFG
    if mode == "pka":  # the keyword was found and KSA masks were made from the conditional forwards
        assert all(m is not None and m.shape == (1, 48) for m in masks)


@pytest.mark.parametrize("family", FAMILIES)
def test_write_pass_leaves_the_cfg_roles_of_the_denoising_forwards_alone(family):
    """Chroma names neither forward (roles come from counting forwards within a step): the nested write forwards
    must not count, or the uncond forward would be taken for a cond one (and make the KSA masks)."""
    from dit_attn.layout import COND, UNCOND

    pipe = _pipe(family)
    control = dit_attn.MultiCondition(spatial=[_img(0), _img(2)], subjects=[(_img(1, 32, 32), "circle")])
    roles = []  # (3 write forwards: an odd count, as a miscount would flip every later role)

    class Roles(dit_attn.Control):
        def before_forward(self, state, args, kwargs):
            if control._state["writing"] is None:
                roles.append(state.batch_roles)
            return args, kwargs

    with dit_attn.attach(pipe, control, Roles()):
        pipe(**tiny_call_kwargs(family, steps=3))
    assert roles == [(COND,), (UNCOND,)] * 3
    assert control.cache_report()["conditions"] == 3


@pytest.mark.parametrize("family,position", [("flux", 2), ("chroma", 2), ("flux2", 4)])
def test_keyword_rows_index_the_transformers_text(family, position):
    """T5 (FLUX.1, Chroma): word i is token i; FLUX.2 [klein]: the prompt sits in Qwen's chat template after
    ``<|im_start|> user``, so word i is token 2 + i. Two forwards per step: the uncond forward makes no mask."""
    pipe = _pipe(family)
    control = dit_attn.MultiCondition(subjects=[(_img(1), "circle")])
    with dit_attn.attach(pipe, control):
        pipe(**tiny_call_kwargs(family))
        w = control._state["keywords"][0]
    assert w[0].nonzero().flatten().tolist() == [position]
    with dit_attn.attach(pipe, dit_attn.MultiCondition(subjects=[(_img(1), "zorb")])), \
            pytest.raises(ValueError, match="'zorb' does not occur"):
        pipe(**tiny_call_kwargs(family))


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


@pytest.mark.parametrize("family", ["chroma", "flux2"])
def test_concat_mode_extends_ids_and_mask_like_image_tokens(family):
    """Concat on Chroma (its [B, text + image] mask gets ones for the condition tokens) and FLUX.2 ([B, N, 4]
    ids): the forward equals a stock forward on the concatenated arguments, and the pipeline gets the image part."""
    pipe = _pipe(family)
    control = dit_attn.MultiCondition(spatial=[_img(0)], subjects=[(_img(1), "circle")], mode="concat")
    outer, inner = _Capture(), _Capture()  # outer's after_forward runs after MultiCondition cut the output
    with dit_attn.attach(pipe, outer, control, inner):
        pipe(**tiny_call_kwargs(family, steps=1, guidance=False))
    call = inner.calls[0]
    assert len(inner.calls) == 1 and call["hidden_states"].shape[1] == 48 * 3
    if family == "chroma":
        mask = call["attention_mask"]
        assert mask.shape == (1, 32 + 48 * 3) and bool((mask[:, 32:] == 1).all()) and bool((mask[:, :32] == 0).any())
    else:
        assert call["img_ids"].shape == (1, 48 * 3, 4)
    transformer = pipe.transformer
    with torch.no_grad():
        full = type(transformer).forward(transformer, **call)[0]
    torch.testing.assert_close(inner.outputs[0], full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outer.outputs[0], full[:, :48], rtol=0, atol=0)


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
    from dit_attn.bench import conditions as bench

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
