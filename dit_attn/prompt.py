"""Prompt emphasis syntax (A1111 / ComfyUI compatible) and its mapping to text-token positions.

Syntax:

* ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1;
* ``(text:1.5)`` multiplies it by 1.5 (a decimal number ≥ 0; ``0`` removes the tokens from attention);
* groups nest and multiply: ``((a))`` = 1.21, ``((a:1.5))`` = 1.65;
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters.

As in A1111, ``:number)`` inside round brackets is always read as a weight (so write ``16\\:9`` ... or better
avoid ``(ratio 16:9)``); any other ``:`` is literal text. ``[text:1.5]`` is an error (A1111 uses it for prompt
editing, which we do not support), as are unbalanced brackets and negative weights.

The parser returns the clean prompt (what the text encoders see) and weighted character spans; the
``*_weights`` functions map spans to the token positions each pipeline's transformer sees, through the fast
tokenizers' offset mappings, with each pipeline's own padding, truncation and templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

ROUND, SQUARE = 1.1, 1 / 1.1
_WEIGHT = re.compile(r":\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\)")
_BAD_WEIGHT = re.compile(r":\s*(-\s*[0-9.]+|[0-9.]*[^0-9.\s)][^)]*)\s*\)")


class PromptSyntaxError(ValueError):
    """Bad emphasis syntax; the message gives the column (1-based) and what is allowed."""


@dataclass(frozen=True)
class WeightedSpan:
    start: int  # character offsets in the clean text, half-open
    end: int
    weight: float


@dataclass(frozen=True)
class EmphasizedPrompt:
    text: str
    spans: tuple[WeightedSpan, ...] = field(default_factory=tuple)

    def char_weights(self) -> list[float]:
        weights = [1.0] * len(self.text)
        for span in self.spans:
            for i in range(span.start, span.end):
                weights[i] = span.weight
        return weights


def parse_emphasis(text: str) -> EmphasizedPrompt:
    """Parse emphasis syntax.

    >>> p = parse_emphasis("a (red:1.5) circle and [blue] square")
    >>> p.text
    'a red circle and blue square'
    >>> [(p.text[s.start:s.end], round(s.weight, 3)) for s in p.spans]
    [('red', 1.5), ('blue', 0.909)]
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    chars: list[str] = []
    weights: list[float] = []
    stack: list[tuple[str, int, int]] = []  # (bracket, column, index in chars where the group starts)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "()[]\\":
            chars.append(text[i + 1])
            weights.append(1.0)
            i += 2
            continue
        if c in "([":
            stack.append((c, i + 1, len(chars)))
            i += 1
            continue
        if c == ":" and stack and stack[-1][0] == "(":
            m = _WEIGHT.match(text, i)
            if m:
                _, _, start = stack.pop()
                w = float(m.group(1))
                for j in range(start, len(chars)):
                    weights[j] *= w
                i = m.end()
                continue
            bad = _BAD_WEIGHT.match(text, i)
            if bad:
                raise PromptSyntaxError(
                    f"bad weight {bad.group(1).strip()!r} at column {i + 2}: use (text:1.5) with a number >= 0")
        if c == ":" and stack and stack[-1][0] == "[" and _WEIGHT.match(text.replace("]", ")"), i):
            raise PromptSyntaxError(f"a weight in square brackets at column {i + 1} is not supported: "
                                    "use (text:0.8) to de-emphasise, or [text] for /1.1")
        if c in ")]":
            want = "(" if c == ")" else "["
            if not stack:
                raise PromptSyntaxError(f"unbalanced '{c}' at column {i + 1}; use \\{c} for a literal bracket")
            bracket, col, start = stack.pop()
            if bracket != want:
                raise PromptSyntaxError(f"'{c}' at column {i + 1} closes '{bracket}' opened at column {col}")
            factor = ROUND if c == ")" else SQUARE
            for j in range(start, len(chars)):
                weights[j] *= factor
            i += 1
            continue
        chars.append(c)
        weights.append(1.0)
        i += 1
    if stack:
        bracket, col, _ = stack[-1]
        closer = ")" if bracket == "(" else "]"
        raise PromptSyntaxError(f"unbalanced '{bracket}' at column {col}: close it with '{closer}' or write "
                                f"\\{bracket} for a literal bracket")
    clean = "".join(chars)
    spans = []
    for k, w in enumerate(weights):
        if w == 1.0:
            continue
        if spans and spans[-1][1] == k and spans[-1][2] == w:
            spans[-1][1] = k + 1
        else:
            spans.append([k, k + 1, w])
    return EmphasizedPrompt(clean, tuple(WeightedSpan(s, e, w) for s, e, w in spans))


def has_emphasis(text: str) -> bool:
    """Whether ``text`` contains emphasis syntax (brackets or escapes)."""
    return any(c in text for c in "()[]\\")


def strip_emphasis(text: str) -> str:
    """The clean prompt without any weights."""
    return parse_emphasis(text).text


def _as_prompt(prompt) -> EmphasizedPrompt:
    return prompt if isinstance(prompt, EmphasizedPrompt) else parse_emphasis(prompt)


def _token_weights_from_chars(offsets, char_weights: list[float], length: int) -> torch.Tensor:
    out = torch.ones(length, dtype=torch.float32)
    for t, (s, e) in enumerate(offsets[:length]):
        if e <= s:
            continue  # special / padding token
        window = char_weights[s:e]
        if not window:
            continue
        # the weight covering most of the token's characters (ties: the emphasised one)
        best = max(set(window), key=lambda w: (window.count(w), w != 1.0))
        out[t] = best
    return out


def token_weights(tokenizer, prompt, *, max_length: int, padding="max_length", truncation: bool = True,
                  add_special_tokens: bool = True, text: str | None = None,
                  char_weights: list[float] | None = None) -> torch.Tensor:
    """Per-token weights (float32, one per position the encoder sees) for a fast tokenizer.

    Every sub-word piece of a weighted word gets its weight; special and padding tokens get 1.

    >>> from dit_attn.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer("t5", 8)
    >>> token_weights(tok, "a (red:2) circle", max_length=8).tolist()
    [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: offsets are needed to map weights")
    if text is None:
        parsed = _as_prompt(prompt)
        text, char_weights = parsed.text, parsed.char_weights()
    enc = tokenizer(text, max_length=max_length, padding=padding, truncation=truncation,
                    add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return _token_weights_from_chars(enc["offset_mapping"], char_weights, len(enc["input_ids"]))


def _collapse_whitespace(text: str, weights: list[float]) -> tuple[str, list[float]]:
    """Wan's prompt_clean (whitespace runs → one space, stripped), keeping each character's weight."""
    out, ws = [], []
    for c, w in zip(text, weights):
        if c.isspace():
            if out and out[-1] != " ":
                out.append(" ")
                ws.append(1.0)
            continue
        out.append(c)
        ws.append(w)
    while out and out[-1] == " ":
        out.pop()
        ws.pop()
    return "".join(out), ws


def template_token_weights(tokenizer, template: str, prompt, *, max_length: int, crop_start: int) -> torch.Tensor:
    """Weights for a prompt embedded in a template whose first ``crop_start`` tokens are dropped (HunyuanVideo)."""
    parsed = _as_prompt(prompt)
    prefix = template.format("\x00").split("\x00")[0]
    formatted = template.format(parsed.text)
    char_weights = [1.0] * len(prefix) + parsed.char_weights() + [1.0] * (len(formatted) - len(prefix) - len(parsed.text))
    w = token_weights(tokenizer, None, max_length=max_length + crop_start, text=formatted, char_weights=char_weights)
    return w[crop_start:]


def sd3_text_weights(tokenizer_clip, tokenizer_t5, prompt, *, clip_max_length: int, t5_max_length: int):
    """SD3 text sequence = [CLIP tokens (L and G share positions), T5 tokens]."""
    clip = token_weights(tokenizer_clip, prompt, max_length=clip_max_length)
    t5 = token_weights(tokenizer_t5, prompt, max_length=t5_max_length) if tokenizer_t5 is not None else \
        torch.ones(t5_max_length)
    return torch.cat([clip, t5])


def pipeline_text_weights(pipe, prompt, *, max_sequence_length: int | None = None,
                          prompt_template: dict | None = None) -> torch.Tensor:
    """The weight of every text token, in the order the pipeline's transformer sees its text sequence."""
    from diffusers import (
        CogVideoXPipeline,
        FluxPipeline,
        HunyuanVideoPipeline,
        StableDiffusion3Pipeline,
        WanImageToVideoPipeline,
        WanPipeline,
    )

    parsed = _as_prompt(prompt)
    if isinstance(pipe, StableDiffusion3Pipeline):
        return sd3_text_weights(pipe.tokenizer, pipe.tokenizer_3, parsed,
                                clip_max_length=pipe.tokenizer.model_max_length,
                                t5_max_length=max_sequence_length or 256)
    if isinstance(pipe, FluxPipeline):
        return token_weights(pipe.tokenizer_2, parsed, max_length=max_sequence_length or 512)
    if isinstance(pipe, (WanPipeline, WanImageToVideoPipeline)):
        text, weights = _collapse_whitespace(parsed.text, parsed.char_weights())
        return token_weights(pipe.tokenizer, None, max_length=max_sequence_length or 512, text=text,
                             char_weights=weights)
    if isinstance(pipe, HunyuanVideoPipeline):
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        template = prompt_template or DEFAULT_PROMPT_TEMPLATE
        crop_start = template.get("crop_start")
        if crop_start is None:  # as the pipeline computes it
            crop_start = len(pipe.tokenizer(template["template"], padding="max_length")["input_ids"]) - 2
        return template_token_weights(pipe.tokenizer, template["template"], parsed,
                                      max_length=max_sequence_length or 256, crop_start=crop_start)
    if isinstance(pipe, CogVideoXPipeline):
        return token_weights(pipe.tokenizer, parsed, max_length=max_sequence_length or 226)
    raise ValueError(f"prompt emphasis does not know {type(pipe).__name__}; supported: StableDiffusion3Pipeline, "
                     "FluxPipeline, WanPipeline, WanImageToVideoPipeline, HunyuanVideoPipeline, CogVideoXPipeline")
