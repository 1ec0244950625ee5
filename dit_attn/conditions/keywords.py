"""Keyword → text-token positions, through the fast tokenizer's offset mapping (our choices; the paper does not say
how keywords become tokens).

A keyword is one or more words. Every whole-word, case-insensitive occurrence of it in the prompt counts
(repeated words: all of them), and every token whose character span overlaps an occurrence is a keyword token
(multi-token keywords and sub-word pieces: all of them). The prompt is tokenized exactly as the pipeline does
(same ``max_sequence_length``, ``padding="max_length"``, truncation), so positions index the transformer's text
sequence.

Example::

    >>> from dit_attn.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer("t5", 16)
    >>> keyword_positions(tok, "a red circle and a red square", "red", max_length=16)
    [1, 5]
    >>> keyword_positions(tok, "a red circle and a red square", "red square", max_length=16)
    [5, 6]
"""

from __future__ import annotations

import re

import torch


class KeywordNotFoundError(ValueError):
    """The keyword does not occur in the prompt (or only past the tokenizer's ``max_length``)."""


def keyword_spans(prompt: str, keyword: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of every whole-word, case-insensitive occurrence of ``keyword``."""
    if not isinstance(keyword, str) or not keyword.strip():
        raise ValueError(f"a subject keyword must be a non-empty string, got {keyword!r}")
    words = [re.escape(w) for w in keyword.split()]
    pattern = re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(prompt)]


def keyword_positions(tokenizer, prompt: str, keyword: str, *, max_length: int,
                      template: str | None = None) -> list[int]:
    """Token positions of ``keyword`` in ``prompt`` (sorted), as the pipeline's fast tokenizer encodes it.

    ``template``: the text the tokenizer really sees, with ``{}`` where the prompt goes (``str.format`` syntax, e.g.
    FLUX.2 [klein]'s chat template); positions then index that whole sequence.

    Raises:
        KeywordNotFoundError: the keyword is not in the prompt, or only beyond ``max_length`` tokens.
        TypeError: the tokenizer is not a fast tokenizer (offsets are needed).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: offsets are needed to locate keywords")
    spans = keyword_spans(prompt, keyword)
    if not spans:
        raise KeywordNotFoundError(f"subject keyword {keyword!r} does not occur in the prompt {prompt!r}; each "
                                   "subject's keyword must appear in the prompt as whole word(s)")
    text = prompt
    if template is not None:
        prefix = template.format("\x00").split("\x00")[0]
        text = template.format(prompt)
        spans = [(s + len(prefix), e + len(prefix)) for s, e in spans]
    enc = tokenizer(text, max_length=max_length, padding="max_length", truncation=True,
                    return_offsets_mapping=True)
    found = []
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and any(s < ke and e > ks for ks, ke in spans):
            found.append(t)
    if not found:
        raise KeywordNotFoundError(f"subject keyword {keyword!r} lies beyond the first {max_length} tokens of the "
                                   f"prompt {prompt!r}; shorten the prompt or raise max_sequence_length")
    return found


def keyword_weights(tokenizer, prompts, keyword: str, *, max_length: int, repeat: int = 1,
                    template: str | None = None) -> torch.Tensor:
    """``[len(prompts) * repeat, max_length]`` float: 1 on the keyword's tokens of each prompt, 0 elsewhere."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    rows = torch.zeros(len(prompts), max_length)
    for r, prompt in enumerate(prompts):
        rows[r, keyword_positions(tokenizer, prompt, keyword, max_length=max_length, template=template)] = 1.0
    return rows.repeat_interleave(repeat, dim=0)
