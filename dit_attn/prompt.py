"""Prompt emphasis syntax (AUTOMATIC1111 / ComfyUI compatible) and its mapping to text-token positions.

:func:`parse_emphasis` reads what users paste from the two tools exactly as the tools read it, never raising on
syntax they accept. ``syntax="a1111"`` (default) follows AUTOMATIC1111's attention parser
(``parse_prompt_attention``):

* ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, ``(text:1.5)`` multiplies it
  by 1.5 (``0`` removes the tokens from attention); groups nest and multiply: ``((a))`` = 1.21, ``((a:1.5))`` = 1.65;
* a weight is ``:`` + a plain decimal number (``1.5``, ``.5``, ``1.``) + ``)``, spaces allowed around it; anything
  else after ``:`` is text (``(style: photo)`` is ``style: photo`` × 1.1, ``(red:1e3)`` is ``red:1e3`` × 1.1);
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; any other backslash is dropped;
* round and square brackets are counted separately; a closer with nothing open is text (``a cat :)``), brackets
  left open are closed at the end of the prompt;
* ``BREAK`` (a word, in capitals) starts a new CLIP chunk in A1111: the clean text gets one space in its place
  (and its surrounding spaces), :attr:`EmphasizedPrompt.chunks` keeps A1111's ``("BREAK", -1)`` marker.

``syntax="comfy"`` follows ComfyUI (``comfy/sd1_clip.py``): only round brackets are syntax (``[x]`` is text),
``(x)`` is × 1.1 per nesting level, ``(x:w)`` *sets* the weight to ``w`` (it does not multiply: ``((a:1.5))`` =
1.5), the weight is whatever follows the group's last ``:`` when Python's ``float`` reads it, only ``\\(`` ``\\)``
are escapes, and unbalanced brackets are handled as ComfyUI's top-level split does.

Not supported, with a :class:`PromptSyntaxWarning` naming the feature (the text is parsed as A1111's attention
parser reads it): ``AND`` (composable diffusion), ``[a|b]`` (alternation), ``[a:b:when]`` / ``[a:when]``
(prompt editing). Weights, explicit or multiplied out, must be finite and in ``[0, MAX_WEIGHT]``: anything else
(``(red:-1)``, a 400-digit number, 100 nested ``(``) raises :class:`PromptSyntaxError` (a ``ValueError``) naming the
span and the allowed range, in every mode. ``strict=True`` also raises on what the tools silently repair:
unbalanced or crossed brackets, a ``:`` inside round brackets that is not followed by a valid weight, prompt
editing. Parsing is linear in the prompt length.

The parser returns the clean prompt (what the text encoders see) and weighted character spans; the
``*_weights`` functions map spans to the token positions each pipeline's transformer sees, through the fast
tokenizers' offset mappings, with each pipeline's own padding, truncation and templates.
"""

from __future__ import annotations

import math
import re
import warnings
from bisect import bisect_left
from dataclasses import dataclass, field

import torch

ROUND, SQUARE = 1.1, 1 / 1.1
MAX_WEIGHT = 1e4  # weights (explicit or multiplied out) must lie in [0, MAX_WEIGHT]
SYNTAXES = ("a1111", "comfy")
_EXACT_DEPTH = 32  # up to this many enclosing groups, weights are multiplied in A1111's order (bit-identical)
_SNIPPET = 40


class PromptSyntaxError(ValueError):
    """Bad emphasis syntax or weight; the message gives the column (1-based) and what is allowed."""


class PromptSyntaxWarning(UserWarning):
    """A1111 prompt syntax outside emphasis (``AND``, ``[a|b]``, ``[a:b:when]``), read as plain text."""


@dataclass(frozen=True)
class WeightedSpan:
    start: int  # character offsets in the clean text, half-open
    end: int
    weight: float


@dataclass(frozen=True)
class EmphasizedPrompt:
    """A parsed prompt: ``text`` (clean), ``spans`` (weights ≠ 1) and ``chunks``, the tool's own parse result
    (A1111: ``parse_prompt_attention``'s merged ``(text, weight)`` list with ``("BREAK", -1)`` markers; ComfyUI:
    ``token_weights``'s list)."""

    text: str
    spans: tuple[WeightedSpan, ...] = field(default_factory=tuple)
    chunks: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def char_weights(self) -> list[float]:
        weights = [1.0] * len(self.text)
        for span in self.spans:
            for i in range(span.start, span.end):
                weights[i] = span.weight
        return weights


def parse_emphasis(text: str, *, syntax: str = "a1111", strict: bool = False) -> EmphasizedPrompt:
    """Parse emphasis syntax as AUTOMATIC1111 (``syntax="a1111"``) or ComfyUI (``"comfy"``) does.

    >>> p = parse_emphasis("a (red:1.5) circle and [blue] square")
    >>> p.text
    'a red circle and blue square'
    >>> [(p.text[s.start:s.end], round(s.weight, 3)) for s in p.spans]
    [('red', 1.5), ('blue', 0.909)]
    >>> parse_emphasis("a cat smiling :) (unclosed").chunks
    (('a cat smiling :) ', 1.0), ('unclosed', 1.1))
    >>> parse_emphasis("[a] ((b:2))", syntax="comfy").chunks
    (('[a] ', 1.0), ('b', 2.0))
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    if syntax == "a1111":
        parsed, notes = _parse_a1111(text, strict)
    elif syntax == "comfy":
        parsed, notes = _parse_comfy(text, strict), ()
    else:
        raise ValueError(f"syntax must be one of {SYNTAXES}, got {syntax!r}")
    for note in notes:
        warnings.warn(note, PromptSyntaxWarning, stacklevel=2)
    return parsed


def has_emphasis(text: str, *, syntax: str = "a1111") -> bool:
    """Whether ``text`` contains emphasis syntax (brackets or escapes; A1111: also ``BREAK``)."""
    if syntax == "comfy":
        return "(" in text or ")" in text
    return any(c in text for c in "()[]\\") or "BREAK" in text


def strip_emphasis(text: str, *, syntax: str = "a1111") -> str:
    """The clean prompt without any weights."""
    return parse_emphasis(text, syntax=syntax).text


# --- shared helpers -------------------------------------------------------------------------------------------
def _snippet(text: str, start: int, end: int) -> str:
    s = text[start:end]
    return s if len(s) <= _SNIPPET else s[:_SNIPPET // 2 - 2] + " ... " + s[-(_SNIPPET // 2 - 3):]


def _range_error(what: str, value: str, text: str, start: int, end: int) -> PromptSyntaxError:
    where = f"column {start + 1}" if end - start <= 1 else f"columns {start + 1}-{end}"
    return PromptSyntaxError(
        f"{what} {_snippet(value, 0, len(value))} of {_snippet(text, start, end)!r} ({where}) is outside the allowed "
        f"range [0, {MAX_WEIGHT:g}]: weights must be finite numbers from 0 (removes the tokens) to {MAX_WEIGHT:g}")


def _in_range(w: float) -> bool:
    return 0.0 <= w <= MAX_WEIGHT  # False for nan too


def _build(pieces, chunks) -> EmphasizedPrompt:
    """``pieces``: (clean text, weight) in order; consecutive equal weights ≠ 1 become one span."""
    parts, spans, pos = [], [], 0
    for s, w in pieces:
        if not s:
            continue
        parts.append(s)
        end = pos + len(s)
        if w != 1.0:
            w = w + 0.0  # -0.0 -> 0.0
            if spans and spans[-1][1] == pos and spans[-1][2] == w:
                spans[-1][1] = end
            else:
                spans.append([pos, end, w])
        pos = end
    return EmphasizedPrompt("".join(parts), tuple(WeightedSpan(s, e, w) for s, e, w in spans), tuple(chunks))


# --- AUTOMATIC1111 ----------------------------------------------------------------------------------------------
# Everything that is not text: an escape (\( \) \[ \] \\ give the character, any other backslash is dropped), a
# run of one bracket, or a weight ":" + number + ")". Between two of these is plain text (so is a ":" not starting
# a weight).
_A1111_EVENTS = re.compile(r"(\\[()\[\]\\]?|\(+|\[+|\)+|\]+|:\s*[+-]?[.\d]+\s*\))")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
_SCHEDULE_TAIL = re.compile(r":\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*\Z")
_EXPONENT_WEIGHT = re.compile(r":\s*([+-]?[.\d]*\d[eE][+-]?\d+)\s*\)")
_BREAK_MARK = object()


def _parse_a1111(text: str, strict: bool):
    notes: dict[str, str] = {}
    if "AND" in text and _AND.search(text):
        notes["and"] = ("'AND' (A1111's composable diffusion) is not supported: it is kept as plain text, and the "
                        "prompt is not split")
    # A1111's (text, weight) list before merging, as runs of text between brackets: e_text (or _BREAK_MARK), e_key
    # = (innermost open round group, innermost open square group), e_pos = where the run starts in ``text``.
    # A group is a node: parent = enclosing group of the same kind, mult = its factor, closed_at = close order.
    e_text: list = []
    e_key: list = []
    e_pos: list[int] = []
    parent: list[int] = []
    depth: list[int] = []
    mult: list[float] = []
    closed_at: list[int] = []
    opened_at: list[int] = []
    rstack: list[int] = []
    sstack: list[int] = []
    order: list[tuple[str, int]] = []  # strict: every open bracket, innermost last
    alternation: set[int] = set()
    key = (-1, -1)
    parts: list[str] = []  # the text run being read
    run_pos = 0
    clock = 0

    def flush():
        e_text.append("".join(parts))
        e_key.append(key)
        e_pos.append(run_pos)
        parts.clear()

    def check_closer(c: str, at: int):
        if not order:
            raise PromptSyntaxError(f"unbalanced '{c}' at column {at + 1}; use \\{c} for a literal bracket")
        want = "(" if c == ")" else "["
        if order[-1][0] != want:
            raise PromptSyntaxError(f"'{c}' at column {at + 1} closes '{order[-1][0]}' opened at column "
                                    f"{order[-1][1] + 1}")
        order.pop()

    def bad_weight(number: str, at: int, hint: str = "") -> PromptSyntaxError:
        return PromptSyntaxError(f"bad weight {number!r} at column {at + 1}{hint}: use (text:1.5) with a decimal "
                                 f"number in [0, {MAX_WEIGHT:g}]")

    pos = 0
    for j, token in enumerate(_A1111_EVENTS.split(text)):
        start = pos
        pos += len(token)
        if not j & 1:  # plain text (even items of the split)
            if not token:
                continue
            if not parts:
                run_pos = start
            if "BREAK" in token:
                for k, part in enumerate(_BREAK.split(token)):
                    if k:
                        flush()
                        e_text.append(_BREAK_MARK)
                        e_key.append(key)
                        e_pos.append(start)
                        run_pos = start
                    parts.append(part)
            else:
                parts.append(token)
            if sstack and "|" in token:
                alternation.add(sstack[-1])
            continue
        c = token[0]
        if c == "\\":
            if not parts:
                run_pos = start
            parts.append(token[1:])
            continue
        if c == "(" or c == "[":  # a run of openers
            if parts:
                flush()
            stack = rstack if c == "(" else sstack
            count, first = len(token), len(parent)
            p = stack[-1] if stack else -1
            d = depth[p] if p >= 0 else 0
            parent.append(p)
            if count == 1:
                depth.append(d + 1)
                mult.append(ROUND if c == "(" else SQUARE)
                closed_at.append(-1)
                opened_at.append(start)
                stack.append(first)
            else:
                parent.extend(range(first, first + count - 1))
                depth.extend(range(d + 1, d + count + 1))
                mult.extend([ROUND if c == "(" else SQUARE] * count)
                closed_at.extend([-1] * count)
                opened_at.extend(range(start, pos))
                stack.extend(range(first, first + count))
            if strict:
                order.extend((c, at) for at in range(start, pos))
            key = (rstack[-1] if rstack else -1, sstack[-1] if sstack else -1)
            continue
        if c == ":":
            if not rstack:  # no round bracket open: the whole ":1.5)" is text
                if strict:
                    raise PromptSyntaxError(f"unbalanced ')' at column {pos}; use \\) for a literal bracket")
                if not parts:
                    run_pos = start
                parts.append(token)
                continue
            number = token[1:-1].strip()
            try:
                w = float(number)
            except ValueError:  # "1.2.3", "." (A1111 itself fails): ':' and the number are text, ')' closes
                if strict:
                    raise bad_weight(number, start + 1) from None
                if not parts:
                    run_pos = start
                parts.append(token[:-1])
                c, start, token = ")", pos - 1, ")"
            else:
                node = rstack[-1]
                if not _in_range(w):
                    raise _range_error("bad weight", repr(number), text, opened_at[node], pos)
                if strict:
                    check_closer(")", pos - 1)
                if parts:
                    flush()
                rstack.pop()
                mult[node] = w
                closed_at[node] = clock
                clock += 1
                key = (rstack[-1] if rstack else -1, sstack[-1] if sstack else -1)
                continue
        # a run of closers
        stack = rstack if c == ")" else sstack
        if strict:
            if c == ")" and order and order[-1][0] == "(" and parts:
                tail = "".join(parts)
                if ":" in tail:
                    bad = tail[tail.rfind(":") + 1:].strip()
                    hint = " (A1111 reads exponents as text)" if _EXPONENT_WEIGHT.match(":" + bad + ")") else ""
                    raise bad_weight(bad, text.rfind(":", 0, start) + 1, hint)
            for at in range(start, pos):
                check_closer(c, at)
        closing = min(len(token), len(stack))
        if closing:
            if c == ")" and parts and ("e" in parts[-1] or "E" in parts[-1]):
                exp = _EXPONENT_WEIGHT.search(text, max(run_pos, start - 64), start + 1)
                if exp:
                    notes.setdefault("exp", f"{exp.group(1)!r} at column {exp.start(1) + 1} is not a weight for "
                                            f"A1111 (no exponents): kept as text; write a decimal number")
            if parts:
                flush()
            if c == "]":
                node = stack[-1]
                inner = text[max(opened_at[node] + 1, start - 64):start]
                if ":" in inner and _SCHEDULE_TAIL.search(inner):
                    if strict:
                        raise PromptSyntaxError(
                            f"{_snippet(text, opened_at[node], start + 1)!r} at column {opened_at[node] + 1} is "
                            f"A1111 prompt editing ([a:b:when]), a weight in square brackets, which is not "
                            f"supported: use (text:0.8) to de-emphasise, or [text] for /1.1")
                    notes.setdefault("edit", f"prompt editing {_snippet(text, opened_at[node], start + 1)!r} "
                                             f"([a:b:when], column {opened_at[node] + 1}) is not supported: read "
                                             f"as emphasis, the text stays in the prompt")
                for at, node in zip(range(start, pos), reversed(stack[-closing:])):
                    if node in alternation:
                        notes.setdefault("alt", f"alternation {_snippet(text, opened_at[node], at + 1)!r} ([a|b], "
                                                f"column {opened_at[node] + 1}) is not supported: read as "
                                                f"emphasis, the text stays in the prompt")
            for node in reversed(stack[-closing:]):
                closed_at[node] = clock
                clock += 1
            del stack[-closing:]
            key = (rstack[-1] if rstack else -1, sstack[-1] if sstack else -1)
        if closing < len(token):  # nothing open any more: the rest are text
            if not parts:
                run_pos = start + closing
            parts.append(token[closing:])
    if parts:
        flush()
    if strict and order:
        c, at = order[-1]
        closer = ")" if c == "(" else "]"
        raise PromptSyntaxError(f"unbalanced '{c}' at column {at + 1}: close it with '{closer}' or write "
                                f"\\{c} for a literal bracket")

    weights = _a1111_weights(text, e_text, e_key, e_pos, parent, depth, mult, closed_at, clock, rstack, sstack)
    chunks: list[list] = []
    pieces = []
    for s, w in zip(e_text, weights):
        if s is _BREAK_MARK:
            pieces.append((" ", 1.0))
            s, w = "BREAK", -w
        else:
            pieces.append((s, w))
        if chunks and chunks[-1][0] == w:
            chunks[-1].append(s)
        else:
            chunks.append([w, s])  # the weight, then the texts to join
    chunks = [("".join(c[1:]), c[0]) for c in chunks] or [("", 1.0)]
    return _build(pieces, chunks), tuple(notes.values())


def _a1111_weights(text, e_text, e_key, e_pos, parent, depth, mult, closed_at, clock, rstack, sstack) -> list[float]:
    """Each run's weight: the product of the factors of the groups open around it, multiplied (from 1.0) in the
    order the groups close, as A1111 does; groups left open close at the end, outermost first, round ones first."""
    explicit = clock  # closed_at < explicit: closed by a bracket
    for stack in (rstack, sstack):
        for node in stack:
            closed_at[node] = clock
            clock += 1
    # A chain of groups of one kind, all closed by brackets, multiplies innermost first: its weight depends only on
    # the factors along it, so it is memoised by them (chain_ids: node -> id of its chain of factors, or None)
    chain_ids: dict[int, int | None] = {}
    ids: dict = {}
    by_chain: dict[int, float] = {}
    logs: list[tuple[float, bool]] = []

    def chain_id(g: int):
        if g in chain_ids:
            return chain_ids[g]
        p = parent[g]
        up = chain_id(p) if p >= 0 else -1  # recursion depth <= _EXACT_DEPTH
        cid = None if up is None or closed_at[g] >= explicit else ids.setdefault((mult[g], up), len(ids))
        chain_ids[g] = cid
        return cid

    def weight_of(r: int, s: int) -> float:
        if (depth[r] if r >= 0 else 0) + (depth[s] if s >= 0 else 0) <= _EXACT_DEPTH:
            cid = chain_id(r if s < 0 else s) if r < 0 or s < 0 else None
            if cid is not None and cid in by_chain:
                return by_chain[cid]
            nodes = []
            for g in (r, s):
                while g >= 0:
                    nodes.append(g)
                    g = parent[g]
            if cid is None:
                nodes.sort(key=closed_at.__getitem__)
            w = 1.0
            for g in nodes:
                w *= mult[g]
            if cid is not None:
                by_chain[cid] = w
            return w
        # deeper nesting: the same factors, summed as logs down the tree (A1111's order is not linear-time)
        if not logs:
            for g, p in enumerate(parent):
                lp, zp = logs[p] if p >= 0 else (0.0, False)
                logs.append((lp + math.log(mult[g]), zp) if mult[g] > 0 else (lp, True))
        lr, zr = logs[r] if r >= 0 else (0.0, False)
        ls, zs = logs[s] if s >= 0 else (0.0, False)
        if zr or zs:
            return 0.0
        return math.exp(lr + ls) if lr + ls < 709.0 else math.inf

    memo: dict = {(-1, -1): 1.0}
    weights = []
    for s, k, pos in zip(e_text, e_key, e_pos):
        w = memo.get(k)
        if w is None:
            w = memo[k] = weight_of(*k)
            if not _in_range(w):
                end = pos + (len(s) if isinstance(s, str) else 5)
                raise _range_error("weight", f"{w:.6g} (nested brackets multiply)", text, pos, max(end, pos + 1))
        weights.append(w)
    return weights


# --- ComfyUI ----------------------------------------------------------------------------------------------------
_ESCAPED_CLOSE, _ESCAPED_OPEN = "\0\1", "\0\2"  # ComfyUI's placeholders for \) and \(
_PAREN = re.compile(r"[()]")


def _parse_comfy(text: str, strict: bool) -> EmphasizedPrompt:
    s = text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)  # same length as text
    n = len(s)
    parens = [m.start() for m in _PAREN.finditer(s)]
    colons = [m.start() for m in re.finditer(":", s)] if ":" in s else []
    match = [-1] * len(parens)  # index (in parens) of the matching ')' ; stray ')' ignored
    stack: list[int] = []
    for k, p in enumerate(parens):
        if s[p] == "(":
            stack.append(k)
        elif stack:
            match[stack.pop()] = k
        elif strict:
            raise PromptSyntaxError(f"unbalanced ')' at column {p + 1}; use \\) for a literal bracket")
    if strict and stack:
        p = parens[stack[-1]]
        raise PromptSyntaxError(f"unbalanced '(' at column {p + 1}: close it with ')' or write \\( for a literal "
                                f"bracket")

    out: list[tuple[str, float]] = []
    out_pos: list[int] = []

    def emit(a: int, b: int, w: float):
        piece = s[a:b]
        if "\0" in piece:
            piece = piece.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")
        out.append((piece, w))
        out_pos.append(a)

    def group(q: int, k: int, end: int, w: float, frames: list):
        """Push the frame of group ``s[q:end+1]`` (``s[q]`` = '(' at parens[k], ``s[end]`` = ')')."""
        w *= 1.1
        inner_end = end
        c = colons[bisect_left(colons, end) - 1] if colons and colons[0] < end else -1
        if c > q + 1 and parens[bisect_left(parens, end) - 1] < c:  # last ':' of the group, no bracket after it
            try:
                v = float(s[c + 1:end])
            except ValueError:
                if strict:
                    raise PromptSyntaxError(f"bad weight {s[c + 1:end].strip()!r} at column {c + 2}: use "
                                            f"(text:1.5) with a number in [0, {MAX_WEIGHT:g}]") from None
            else:
                if not _in_range(v):
                    raise _range_error("bad weight", repr(s[c + 1:end].strip()), text, q, end + 1)
                w, inner_end = v, c
        frames.append([q + 1, inner_end, w, k + 1])

    def run(frames: list):
        while frames:
            f = frames[-1]
            cur, b, w, t = f
            if t < len(parens) and parens[t] < b:  # always '(' here: inner ')' are matched inside the region
                q = parens[t]
                if q > cur:
                    emit(cur, q, w)
                mk = match[t]
                if mk >= 0 and parens[mk] < b:
                    f[0], f[3] = parens[mk] + 1, mk + 1
                    group(q, t, parens[mk], w, frames)
                else:  # unclosed within the region: the rest is one item, a group if it ends with ')'
                    f[0], f[3] = b, len(parens)
                    if b - q >= 2 and s[b - 1] == ")":
                        group(q, t, b - 1, w, frames)
                    else:
                        emit(q, b, w)
            else:
                if b > cur:
                    emit(cur, b, w)
                frames.pop()

    level, start, t = 0, 0, 0
    while t < len(parens):
        p = parens[t]
        if s[p] == ")":
            level -= 1
        elif level:
            level += 1
        else:  # '(' at level 0: a top-level group
            if p > start:
                emit(start, p, 1.0)
            if match[t] >= 0:
                end = parens[match[t]]
                run_frames: list = []
                group(p, t, end, 1.0, run_frames)
                run(run_frames)
                start, t = end + 1, match[t] + 1
                continue
            start = n
            if n - p >= 2 and s[n - 1] == ")":
                run_frames = []
                group(p, t, n - 1, 1.0, run_frames)
                run(run_frames)
            else:
                emit(p, n, 1.0)
            break
        t += 1
    if start < n:
        emit(start, n, 1.0)
    for (piece, w), a in zip(out, out_pos):
        if not _in_range(w):
            raise _range_error("weight", f"{w:.6g} (nested brackets multiply)", text, a, a + len(piece))
    return _build(out, out)


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
