"""Family adapters: how each diffusers attention class computes Q/K/V and finishes, as stock does.

An adapter has two functions:

* ``project(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len)`` returns a
  :class:`Projected`: one or more :class:`CallSpec` (q, k, v in ``[B, N, H, D]``, the stock mask, and the token
  segments of queries and keys) plus whatever ``finish`` needs;
* ``finish(attn, outs, projected)`` turns the attention outputs (one per call spec) into the stock return value.

Each function mirrors the stock processor of the installed diffusers line by line (projections, norms, RoPE,
concatenation order, dtype casts), so that with no control active the processor reproduces stock exactly; the
tests compare every adapter with the stock processor. Where diffusers exposes a helper (FLUX and Wan projection
helpers, ``apply_rotary_emb``) we call it instead of re-writing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import _get_qkv_projections as _flux_qkv
from diffusers.models.transformers.transformer_wan import _get_added_kv_projections as _wan_added_kv
from diffusers.models.transformers.transformer_wan import _get_qkv_projections as _wan_qkv

from ..layout import segments


@dataclass
class CallSpec:
    query: torch.Tensor  # [B, N, H, D]
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    kind: str
    query_segments: dict
    key_segments: dict
    parallel: bool = True  # whether the processor's context-parallel config applies to this call


@dataclass
class Projected:
    calls: list[CallSpec]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    name: str
    project: Callable[..., Projected]
    finish: Callable[..., Any]


def _heads_first_to_dispatch(*tensors):
    """[B, H, N, D] → [B, N, H, D] views (the dispatcher permutes back, so stock strides are kept)."""
    return tuple(t.transpose(1, 2) for t in tensors)


# --- SD3 / SD3.5 (legacy ``Attention`` + ``JointAttnProcessor2_0``; ``attn2`` of dual blocks has no context) ---
def _sd3_project(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len):
    batch = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    n_text = 0
    if encoder_hidden_states is not None:
        eq, ek, ev = (
            proj(encoder_hidden_states).view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        query, key, value = (torch.cat([a, b], dim=2) for a, b in ((query, eq), (key, ek), (value, ev)))
        n_text = encoder_hidden_states.shape[1]
    segs = segments(("image", "text"), {"image": hidden_states.shape[1], "text": n_text})
    q, k, v = _heads_first_to_dispatch(query, key, value)
    # The stock processor ignores ``attention_mask``; so do we.
    kind = "joint" if n_text else "self"
    return Projected([CallSpec(q, k, v, None, kind, segs, segs)],
                     {"n_image": hidden_states.shape[1], "context": encoder_hidden_states is not None})


def _sd3_finish(attn, outs, p: Projected):
    out = outs[0]
    batch, _, heads, head_dim = out.shape
    hidden_states = out.reshape(batch, -1, heads * head_dim).to(p.calls[0].query.dtype)
    if p.info["context"]:
        n = p.info["n_image"]
        hidden_states, encoder_hidden_states = hidden_states[:, :n], hidden_states[:, n:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if p.info["context"]:
        return hidden_states, encoder_hidden_states
    return hidden_states


# --- FLUX.1 (``FluxAttention``: double-stream with added projections, single-stream on [text, image]) ---------
def _flux_project(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len):
    query, key, value, eq, ek, ev = _flux_qkv(attn, hidden_states, encoder_hidden_states)
    query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    double = attn.added_kv_proj_dim is not None
    if double:
        eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
        eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        query, key, value = (torch.cat([a, b], dim=1) for a, b in ((eq, query), (ek, key), (ev, value)))
        n_text = encoder_hidden_states.shape[1]
    else:
        # Single-stream blocks get [text, image] already concatenated; the text length comes from the forward.
        n_text = text_len or 0
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    n_total = query.shape[1]
    segs = segments(("text", "image"), {"text": n_text, "image": n_total - n_text})
    return Projected([CallSpec(query, key, value, attention_mask, "joint" if double else "single", segs, segs)],
                     {"ehs_len": encoder_hidden_states.shape[1] if encoder_hidden_states is not None else None})


def _flux_finish(attn, outs, p: Projected):
    hidden_states = outs[0].flatten(2, 3).to(p.calls[0].query.dtype)
    n_ctx = p.info["ehs_len"]
    if n_ctx is None:
        return hidden_states
    encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
        [n_ctx, hidden_states.shape[1] - n_ctx], dim=1)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
    encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
    return hidden_states, encoder_hidden_states


# --- Wan 2.1 / 2.2 (``WanAttention``: ``attn1`` self-attention with RoPE, ``attn2`` cross-attention, I2V) -------
_WAN_TEXT_LEN = 512  # the stock processor hard-codes the text context length when an image context is present


def _wan_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Interleaved-pair rotation, as Wan's stock processor applies it.
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _wan_project(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len):
    context_img = None
    if attn.add_k_proj is not None:
        n_img_ctx = encoder_hidden_states.shape[1] - _WAN_TEXT_LEN
        context_img = encoder_hidden_states[:, :n_img_ctx]
        encoder_hidden_states = encoder_hidden_states[:, n_img_ctx:]
    cross = encoder_hidden_states is not None
    query, key, value = _wan_qkv(attn, hidden_states, encoder_hidden_states)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
    if rotary is not None:
        query, key = _wan_rope(query, *rotary), _wan_rope(key, *rotary)
    n_q = query.shape[1]
    q_segs = {"image": (0, n_q)}
    k_segs = {"text": (0, key.shape[1])} if cross else q_segs
    calls = []
    if context_img is not None:
        key_img, value_img = _wan_added_kv(attn, context_img)
        key_img = attn.norm_added_k(key_img)
        key_img, value_img = (t.unflatten(2, (attn.heads, -1)) for t in (key_img, value_img))
        calls.append(CallSpec(query, key_img, value_img, None, "cross_image", q_segs,
                              {"image_context": (0, key_img.shape[1])}, parallel=False))
    calls.append(CallSpec(query, key, value, attention_mask, "cross" if cross else "self", q_segs, k_segs,
                          parallel=not cross))
    return Projected(calls)


def _wan_finish(attn, outs, p: Projected):
    dtype_ref = p.calls[-1].query
    hidden_states = outs[-1].flatten(2, 3).type_as(dtype_ref)
    if len(outs) == 2:
        hidden_states = hidden_states + outs[0].flatten(2, 3).type_as(dtype_ref)
    return attn.to_out[1](attn.to_out[0](hidden_states))


# --- HunyuanVideo (legacy ``Attention`` + ``HunyuanVideoAttnProcessor2_0``; [video, text]) ---------------------
def _hunyuan_project(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len):
    single = attn.add_q_proj is None and encoder_hidden_states is not None
    if single:
        hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    n_ctx = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
    if rotary is not None:
        if single:
            query = torch.cat([apply_rotary_emb(query[:, :-n_ctx], rotary, sequence_dim=1), query[:, -n_ctx:]], 1)
            key = torch.cat([apply_rotary_emb(key[:, :-n_ctx], rotary, sequence_dim=1), key[:, -n_ctx:]], 1)
        else:
            query = apply_rotary_emb(query, rotary, sequence_dim=1)
            key = apply_rotary_emb(key, rotary, sequence_dim=1)
    if attn.add_q_proj is not None and encoder_hidden_states is not None:
        eq, ek, ev = (
            proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        query, key, value = (torch.cat([a, b], dim=1) for a, b in ((query, eq), (key, ek), (value, ev)))
    segs = segments(("image", "text"), {"image": query.shape[1] - n_ctx, "text": n_ctx})
    kind = "single" if single else ("joint" if n_ctx else "self")
    return Projected([CallSpec(query, key, value, attention_mask, kind, segs, segs)], {"n_ctx": n_ctx})


def _hunyuan_finish(attn, outs, p: Projected):
    hidden_states = outs[0].flatten(2, 3).to(p.calls[0].query.dtype)
    n_ctx = p.info["n_ctx"]
    encoder_hidden_states = None
    if n_ctx:
        hidden_states, encoder_hidden_states = hidden_states[:, :-n_ctx], hidden_states[:, -n_ctx:]
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    return hidden_states, encoder_hidden_states


# --- CogVideoX (legacy ``Attention`` + ``CogVideoXAttnProcessor2_0``; [text, video] in one stream) -------------
def _cogvideox_project(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, text_len):
    n_text = encoder_hidden_states.size(1)
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    batch, seq_len, _ = hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rotary is not None:
        query[:, :, n_text:] = apply_rotary_emb(query[:, :, n_text:], rotary)
        if not attn.is_cross_attention:
            key[:, :, n_text:] = apply_rotary_emb(key[:, :, n_text:], rotary)
    segs = segments(("text", "image"), {"text": n_text, "image": seq_len - n_text})
    q, k, v = _heads_first_to_dispatch(query, key, value)
    return Projected([CallSpec(q, k, v, attention_mask, "joint", segs, segs)], {"n_text": n_text})


def _cogvideox_finish(attn, outs, p: Projected):
    out = outs[0]
    batch, _, heads, head_dim = out.shape
    hidden_states = out.reshape(batch, -1, heads * head_dim)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    n_text = p.info["n_text"]
    encoder_hidden_states, hidden_states = hidden_states.split([n_text, hidden_states.size(1) - n_text], dim=1)
    return hidden_states, encoder_hidden_states


SD3 = Adapter("sd3_joint", _sd3_project, _sd3_finish)
FLUX = Adapter("flux", _flux_project, _flux_finish)
WAN = Adapter("wan", _wan_project, _wan_finish)
HUNYUAN_VIDEO = Adapter("hunyuan_video", _hunyuan_project, _hunyuan_finish)
COGVIDEOX = Adapter("cogvideox", _cogvideox_project, _cogvideox_finish)
