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


def _fit(weights: torch.Tensor, length: int | None, align: str = "left") -> torch.Tensor:
    """``weights`` cut or padded with ones to ``length`` tokens (padding after them, or before for ``"right"``)."""
    if length is None or weights.shape[0] == length:
        return weights
    if weights.shape[0] > length:
        return weights[:length] if align == "left" else weights[-length:]
    pad = torch.ones(length - weights.shape[0])
    return torch.cat([weights, pad] if align == "left" else [pad, weights])


def _chat_template(tokenizer, **options) -> str:
    """The chat template a pipeline applies to one user message, with ``{}`` where the prompt goes."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                         add_generation_prompt=True, **options)
    return text.replace("{", "{{").replace("}", "}}").replace("\x00", "{}")


def _t5_like(attr: str, default_length: int):
    def weights(pipe, parsed, args):
        return token_weights(getattr(pipe, attr), parsed, max_length=args.get("max_sequence_length") or default_length)

    return weights


def _wan(pipe, parsed, args):
    text, char_weights = _collapse_whitespace(parsed.text, parsed.char_weights())
    return token_weights(pipe.tokenizer, None, max_length=args.get("max_sequence_length") or 512, text=text,
                         char_weights=char_weights)


def _sd3(pipe, parsed, args):
    return sd3_text_weights(pipe.tokenizer, pipe.tokenizer_3, parsed, clip_max_length=pipe.tokenizer.model_max_length,
                            t5_max_length=args.get("max_sequence_length") or 256)


def _hunyuan_video(pipe, parsed, args):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    template = args.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE
    crop_start = template.get("crop_start")
    if crop_start is None:  # as the pipeline computes it
        crop_start = len(pipe.tokenizer(template["template"], padding="max_length")["input_ids"]) - 2
    return template_token_weights(pipe.tokenizer, template["template"], parsed,
                                  max_length=args.get("max_sequence_length") or 256, crop_start=crop_start)


def _qwenimage(pipe, parsed, args):
    # The pipeline drops the template's first tokens after the text encoder; the rest (prompt + template end) is
    # padded to the longest prompt of the batch.
    return template_token_weights(pipe.tokenizer, pipe.prompt_template_encode, parsed,
                                  max_length=args.get("max_sequence_length") or 512,
                                  crop_start=pipe.prompt_template_encode_start_idx)


def _flux2_klein(pipe, parsed, args):
    template = _chat_template(pipe.tokenizer, enable_thinking=False)
    return template_token_weights(pipe.tokenizer, template, parsed,
                                  max_length=args.get("max_sequence_length") or 512, crop_start=0)


def _cogview4(pipe, parsed, args):
    # GLM: the prompt's tokens, padded on the left (to the longest prompt, then to a multiple of 16).
    return token_weights(pipe.tokenizer, parsed, max_length=args.get("max_sequence_length") or 1024,
                         padding=False), "right"


#: How each pipeline lays its prompt out in the text sequence the transformer sees: pipeline class name ->
#: ``recipe(pipe, parsed_prompt, encode_prompt_arguments) -> weights`` (or ``(weights, "right")`` when the
#: sequence is padded on the left). The weights are then fitted to the encoded sequence's length.
TEXT_LAYOUTS = {
    "StableDiffusion3Pipeline": _sd3,
    "FluxPipeline": _t5_like("tokenizer_2", 512),
    "ChromaPipeline": _t5_like("tokenizer", 512),
    "WanPipeline": _wan, "WanImageToVideoPipeline": _wan, "WanVACEPipeline": _wan,
    "SkyReelsV2Pipeline": _wan, "SkyReelsV2DiffusionForcingPipeline": _wan,
    "HunyuanVideoPipeline": _hunyuan_video,
    "CogVideoXPipeline": _t5_like("tokenizer", 226),
    "LTXPipeline": _t5_like("tokenizer", 128),
    "QwenImagePipeline": _qwenimage,
    "Flux2KleinPipeline": _flux2_klein,
    "CogView4Pipeline": _cogview4,
}


def text_layout_of(pipe):
    """The recipe of :data:`TEXT_LAYOUTS` for ``pipe`` (by class, nearest first), or ``None``."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in TEXT_LAYOUTS:
            return TEXT_LAYOUTS[cls.__name__]
    return None


def pipeline_text_weights(pipe, prompt, *, max_sequence_length: int | None = None,
                          prompt_template: dict | None = None, length: int | None = None) -> torch.Tensor:
    """The weight of every text token, in the order the pipeline's transformer sees its text sequence.

    ``length`` (the encoded sequence's length, when known) fits the weights to it: pipelines that pad to the
    longest prompt of a batch (Qwen-Image, CogView4) give sequences shorter than the tokenizer's maximum.
    """
    recipe = text_layout_of(pipe)
    if recipe is None:
        raise ValueError(f"prompt emphasis does not know {type(pipe).__name__}; supported: {', '.join(TEXT_LAYOUTS)}")
    result = recipe(pipe, _as_prompt(prompt), {"max_sequence_length": max_sequence_length,
                                                "prompt_template": prompt_template})
    weights, align = result if isinstance(result, tuple) else (result, "left")
    return _fit(weights, length, align)
