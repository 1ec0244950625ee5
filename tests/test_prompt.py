"""Emphasis syntax parser (A1111 / ComfyUI compatible) and span → token mapping."""

import json
import re
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dit_attn.prompt import (
    MAX_WEIGHT,
    EmphasizedPrompt,
    PromptSyntaxError,
    PromptSyntaxWarning,
    has_emphasis,
    parse_emphasis,
    pipeline_text_weights,
    strip_emphasis,
    token_weights,
)

DATA = Path(__file__).parent / "data"


def _spans(text, **options):
    p = _quiet_parse(text, **options)
    return p.text, [(p.text[s.start:s.end], round(s.weight, 4)) for s in p.spans]


def _quiet_parse(text, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptSyntaxWarning)
        return parse_emphasis(text, **options)


def _same_weight(a, b):
    return a == b and (a == 0 or float(a).hex() == float(b).hex())  # bit-identical (the sign of 0 aside)


def _same_chunks(got, expected):
    return len(got) == len(expected) and all(
        gt == et and _same_weight(gw, ew) for (gt, gw), (et, ew) in zip(got, expected))


@pytest.mark.parametrize("text, clean, spans", [
    ("a red circle", "a red circle", []),
    ("a (red) circle", "a red circle", [("red", 1.1)]),
    ("a [red] circle", "a red circle", [("red", 0.9091)]),
    ("a (red:1.5) circle", "a red circle", [("red", 1.5)]),
    ("a (big red:0.7) circle", "a big red circle", [("big red", 0.7)]),
    ("((a))", "a", [("a", 1.21)]),
    ("((a:1.5))", "a", [("a", 1.65)]),
    ("(a (b:2))", "a b", [("a ", 1.1), ("b", 2.2)]),
    ("(red:0) x", "red x", [("red", 0.0)]),
    (r"\(literal\) \[x\] \\", r"(literal) [x] \ ".strip(), []),
    ("time: noon (a : 2 )", "time: noon a ", [("a ", 2.0)]),
    # what A1111 accepts and the strict mode refuses
    ("a cat smiling :)", "a cat smiling :)", []),
    ("a (red", "a red", [("red", 1.1)]),
    ("a red)", "a red)", []),
    ("a (red]", "a red]", [("red]", 1.1)]),
    ("(style: photo)", "style: photo", [("style: photo", 1.1)]),
    ("(x:1.)", "x", []),
    ("(x:1.2.3)", "x:1.2.3", [("x:1.2.3", 1.1)]),
    ("[red:1.5]", "red:1.5", [("red:1.5", 0.9091)]),
    ("a BREAK b", "a b", []),
    ("(a BREAK b:2)", "a b", [("a", 2.0), ("b", 2.0)]),
    ("C:\\path", "C:path", []),
])
def test_parser(text, clean, spans):
    assert _spans(text) == (clean, spans)


@pytest.mark.parametrize("text, clean, spans", [
    ("a [red] (circle)", "a [red] circle", [("circle", 1.1)]),
    ("((a:1.5))", "a", [("a", 1.5)]),  # an explicit weight sets the weight
    ("((a):1.5)", "a", [("a", 1.65)]),
    ("a cat :) (happy)", "a cat :) (happy)", []),  # after a stray ')' the next '(' only evens the count
    (r"\(a\) \[b\]", r"(a) \[b\]", []),
])
def test_comfy_parser(text, clean, spans):
    assert _spans(text, syntax="comfy") == (clean, spans)


@pytest.mark.parametrize("text, message", [
    ("a (red", r"unbalanced '\(' at column 3"),
    ("a red)", r"unbalanced '\)' at column 6; use \\\)"),
    ("a red :2)", r"unbalanced '\)' at column 9"),
    ("a (red]", r"'\]' at column 7 closes '\(' opened at column 3"),
    ("(a[b)c]", r"'\)' at column 5 closes '\[' opened at column 3"),
    ("(red:abc)", r"bad weight 'abc' at column 6"),
    ("(style: photo)", r"bad weight 'photo' at column 8"),
    ("(red:)", r"bad weight '' at column 6"),
    ("(red:1.2.3)", r"bad weight '1.2.3' at column 6"),
    ("(red:1e3)", r"bad weight '1e3' at column 6 \(A1111 reads exponents as text\)"),
    ("[red:1.5]", r"'\[red:1.5\]' at column 1 is A1111 prompt editing .* square brackets"),
    ("x [a:b:3] y", r"column 3 is A1111 prompt editing"),
])
def test_strict_errors_name_the_column(text, message):
    with pytest.raises(PromptSyntaxError, match=message):
        parse_emphasis(text, strict=True)
    _quiet_parse(text)  # the default mode reads it as A1111 does


@pytest.mark.parametrize("text, message", [
    ("a (red", r"unbalanced '\(' at column 3"),
    ("a red)", r"unbalanced '\)' at column 6"),
    ("(style: photo)", r"bad weight 'photo' at column 8"),
    ("(a:)", r"bad weight '' at column 4"),
])
def test_comfy_strict_errors(text, message):
    with pytest.raises(PromptSyntaxError, match=message):
        parse_emphasis(text, syntax="comfy", strict=True)
    parse_emphasis(text, syntax="comfy")


def test_strict_accepts_well_formed_prompts_with_the_same_result():
    text = r"a (((house:1.3))) [on] a (hill:0.5), sun, (((sky))). \(x\) (16 \: 9) BREAK (a:b:2)"
    assert parse_emphasis(text, strict=True) == parse_emphasis(text)
    assert parse_emphasis("((a:1.5)) [b]", syntax="comfy", strict=True) == parse_emphasis("((a:1.5)) [b]",
                                                                                          syntax="comfy")


@pytest.mark.parametrize("syntax", ["a1111", "comfy"])
@pytest.mark.parametrize("text, what", [
    ("(red:-1)", r"bad weight '-1' of '\(red:-1\)' \(columns 1-8\) is outside the allowed range \[0, 10000\]"),
    ("(red:10001)", r"bad weight '10001' .* allowed range \[0, 10000\]"),
    ("(red:1" + "0" * 39 + ")", r"bad weight '1000.* allowed range"),  # float32 overflow (was a RuntimeError)
    ("(red:1" + "0" * 400 + ")", r"bad weight '1000.* \.\.\. .*allowed range"),  # inf (was an all-NaN image)
    ("((((a)):9000))", r"weight (11979|10890) \(nested brackets multiply\) of 'a' \(column 5\) is outside the"),
    ("(" * 100 + "a" + ")" * 100, r"weight 13780\.6 .*allowed range"),
    ("(" * 50000 + "a" + ")" * 50000, r"weight inf .*allowed range"),
])
def test_out_of_range_weights_are_rejected(text, what, syntax):
    for strict in (False, True):
        with pytest.raises(PromptSyntaxError, match=what):
            parse_emphasis(text, syntax=syntax, strict=strict)


def test_out_of_range_products_of_unclosed_brackets_are_rejected():
    with pytest.raises(PromptSyntaxError, match=r"weight 13780\.6 \(nested brackets multiply\) of 'a' \(column 101\)"):
        parse_emphasis("(" * 100 + "a")
    with pytest.raises(PromptSyntaxError, match=r"weight 11979 .*of 'a' \(column 5\)"):
        parse_emphasis("((((a:9000))))")


@pytest.mark.parametrize("text", ["(red:1e400)", "(red:inf)", "(red:nan)", "(red:-inf)", "(red:1e39)", "(red:2e4)"])
def test_comfy_non_finite_weights_are_rejected(text):
    with pytest.raises(PromptSyntaxError, match=r"allowed range \[0, 10000\]"):
        parse_emphasis(text, syntax="comfy")


def test_weight_limits():
    assert MAX_WEIGHT == 1e4
    for syntax in ("a1111", "comfy"):
        assert _spans("(red:10000) (b:0)", syntax=syntax)[1] == [("red", 10000.0), ("b", 0.0)]
    assert _spans("(red:-0)")[1] == [("red", 0.0)]
    assert parse_emphasis("[" * 50000 + "a").spans == (parse_emphasis("a").spans[0:0] + (
        parse_emphasis("(a:0)").spans[0],))  # (1/1.1)^50000 underflows to 0: allowed


def test_a1111_exponents_are_text_with_a_warning():
    with pytest.warns(PromptSyntaxWarning, match=r"'1e400' at column 6 is not a weight for A1111"):
        p = parse_emphasis("(red:1e400)")
    assert p.chunks == (("red:1e400", 1.1),)


@pytest.mark.parametrize("text, feature", [
    ("a cat AND a dog", r"'AND' \(A1111's composable diffusion\) is not supported"),
    ("a cat AND a dog:1.5", r"'AND'"),
    ("a [cat|dog]", r"alternation '\[cat\|dog\]' \(\[a\|b\], column 3\) is not supported"),
    ("[fe|]male", r"alternation"),
    ("a [cat:dog:0.5]", r"prompt editing '\[cat:dog:0.5\]' \(\[a:b:when\], column 3\) is not supported"),
    ("a [cat: 10] b", r"prompt editing"),
    ("a [cat::10] b", r"prompt editing"),
])
def test_unsupported_a1111_features_warn(text, feature):
    with pytest.warns(PromptSyntaxWarning, match=feature):
        p = parse_emphasis(text)
    assert p.text == _a1111_reference(text)[1]  # read as the attention parser reads it


@pytest.mark.parametrize("text", ["a cat and a dog", "ANDROID", "a [cat] (dog:2)", "a | b", "(a|b)", "time: 10",
                                  "[a] [b]: 2", "(a:1.5)"])
def test_no_warning_without_those_features(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_emphasis(text)
        parse_emphasis("a AND [b|c] [d:e:1]", syntax="comfy")  # all text for ComfyUI


def test_break():
    p = parse_emphasis("a cat  BREAK\na dog")
    assert p.text == "a cat a dog" and p.spans == ()
    assert p.chunks == (("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0))
    assert parse_emphasis("BREAK").chunks == (("", 1.0), ("BREAK", -1.0), ("", 1.0))
    assert parse_emphasis("aBREAK BREAKb break").text == "aBREAK BREAKb break"  # a word, in capitals
    assert _spans("(a BREAK b)") == ("a b", [("a", 1.1), ("b", 1.1)])
    assert parse_emphasis("(a BREAK b)").chunks == (("a", 1.1), ("BREAK", -1.1), ("b", 1.1))
    assert parse_emphasis("a BREAK b", syntax="comfy").text == "a BREAK b"


def test_helpers():
    assert has_emphasis("(a)") and not has_emphasis("a b") and has_emphasis("a BREAK b")
    assert not has_emphasis("[a]", syntax="comfy") and has_emphasis("(a)", syntax="comfy")
    assert strip_emphasis("a (b:2) [c]") == "a b c"
    assert strip_emphasis("a (b:2) [c]", syntax="comfy") == "a b [c]"
    with pytest.raises(ValueError, match="syntax must be one of"):
        parse_emphasis("a", syntax="novelai")
    with pytest.raises(TypeError):
        parse_emphasis(None)


def test_emphasized_prompt_api():
    p = parse_emphasis("a (red:2) [b]")
    assert isinstance(p, EmphasizedPrompt) and isinstance(p.spans, tuple)
    assert p.char_weights() == [1.0, 1.0, 2.0, 2.0, 2.0, 1.0, pytest.approx(1 / 1.1)]
    assert EmphasizedPrompt("x").char_weights() == [1.0]  # built by hand, as callers may


# --- the tools' own results, as data --------------------------------------------------------------------------
_A1111 = json.loads((DATA / "a1111_prompts.json").read_text(encoding="utf-8"))["cases"]
_COMFY = json.loads((DATA / "comfy_prompts.json").read_text(encoding="utf-8"))["cases"]


def test_corpora_are_complete():
    assert len(_A1111) >= 90 and len(_COMFY) >= 45
    assert sum(c.get("source", "").startswith("A1111") for c in _A1111) == 21  # the docstrings' examples
    assert sum("source" in c for c in _COMFY) == 10


@pytest.mark.parametrize("case", _A1111, ids=[c["prompt"][:40] for c in _A1111])
def test_a1111_corpus(case):
    p = _quiet_parse(case["prompt"])
    assert _same_chunks(p.chunks, [tuple(c) for c in case["chunks"]])
    if "BREAK" not in case["prompt"]:  # the clean text and weights are the chunks'
        assert p.text == "".join(t for t, _ in case["chunks"])
        expected = [w for t, w in case["chunks"] for _ in t]
        assert p.char_weights() == pytest.approx(expected)


@pytest.mark.parametrize("case", _COMFY, ids=[c["prompt"][:40] for c in _COMFY])
def test_comfy_corpus(case):
    p = parse_emphasis(case["prompt"], syntax="comfy")
    assert _same_chunks(p.chunks, [tuple(c) for c in case["chunks"]])
    assert p.text == "".join(t for t, _ in case["chunks"])
    assert p.char_weights() == pytest.approx([w for t, w in case["chunks"] for _ in t])


# --- fuzzing against references written from the rules (naive, quadratic) -------------------------------------
_SPECIAL = "\\()[]:"
_A1111_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")


def _a1111_reference(text):
    """A1111's attention parser from its rules: runs of text; an opening bracket notes where it opens, and when it
    closes (by its bracket, by ':number)' for round ones, or at the end, round ones first, outermost first) every
    run since multiplies by its factor. Returns (merged chunks, clean text)."""
    runs, opened = [], {"(": [], "[": []}

    def close(kind, factor):
        for run in runs[opened[kind].pop():]:
            run[1] *= factor

    def text_run(s):
        for k, part in enumerate(re.split(r"\s*\bBREAK\b\s*", s)):
            if k:
                runs.append([None, -1.0])
            runs.append([part, 1.0])

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            escaped = text[i + 1:i + 2] in tuple("()[]\\")
            runs.append([text[i + 1] if escaped else "", 1.0])
            i += 2 if escaped else 1
        elif c in "([":
            opened[c].append(len(runs))
            i += 1
        elif c == ")" and opened["("] or c == "]" and opened["["]:
            close("(" if c == ")" else "[", 1.1 if c == ")" else 1 / 1.1)
            i += 1
        elif c == ":" and (m := _A1111_WEIGHT.match(text, i)) and _is_float(m.group(1)):
            if opened["("]:
                close("(", float(m.group(1)))
            else:
                text_run(m.group())
            i = m.end()
        elif c in ")]:":
            runs.append([c, 1.0])
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in _SPECIAL:
                j += 1
            text_run(text[i:j])
            i = j
    for kind, factor in (("(", 1.1), ("[", 1 / 1.1)):
        while opened[kind]:
            for run in runs[opened[kind].pop(0):]:
                run[1] *= factor
    clean = "".join(" " if t is None else t for t, _ in runs)
    merged = []
    for t, w in runs:
        t = "BREAK" if t is None else t
        if merged and merged[-1][1] == w:
            merged[-1][0] += t
        else:
            merged.append([t, w])
    return [tuple(c) for c in merged] or [("", 1.0)], clean


def _is_float(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _comfy_reference(text):
    """ComfyUI's rules: \\( \\) hidden; split at the top level (a '(' opens a group only when the count of open
    minus closed brackets is 0); a piece '(...)' is a group: × 1.1, or the weight after its last ':' (not its
    first character) when float() reads it; everything else is text at the current weight."""
    hidden = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    out = []

    def pieces(s):
        level, current = 0, ""
        for c in s:
            if c == "(" and level == 0 and current:
                yield current
                current = ""
            current += c
            level += (c == "(") - (c == ")")
            if c == ")" and level == 0:
                yield current
                current = ""
        if current:
            yield current

    def weigh(s, weight):
        for piece in pieces(s):
            if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
                out.append((piece.replace("\0\1", ")").replace("\0\2", "("), weight))
                continue
            inner, w = piece[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0 and _is_float(inner[colon + 1:]):
                inner, w = inner[:colon], float(inner[colon + 1:])
            weigh(inner, w)

    weigh(hidden, 1.0)
    return out


_FRAGMENTS = ["a", "b c", " ", "(", ")", "[", "]", ":", "\\", "\\(", "\\)", "\\[", "\\]", "\\\\", "|", "BREAK",
              " BREAK ", "AND", ":1.5)", ": 2 )", ":1.)", ":.)", ":1.2.3)", ":0)", ":+.5)", "1e3", ".", "0", "é", "_",
              "\n"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=24).map("".join))
def test_a1111_fuzz_matches_the_rules(text):
    p = _quiet_parse(text)
    chunks, clean = _a1111_reference(text)
    assert _same_chunks(p.chunks, chunks)
    assert p.text == clean
    assert all(0 <= s.start < s.end <= len(p.text) and 0 <= s.weight <= MAX_WEIGHT for s in p.spans)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=24).map("".join))
def test_comfy_fuzz_matches_the_rules(text):
    p = parse_emphasis(text, syntax="comfy")
    expected = _comfy_reference(text)
    assert _same_chunks(p.chunks, expected)
    assert p.text == "".join(t for t, _ in expected)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab :.()[]\\|0+\n", max_size=40))
def test_never_raises_in_default_mode(text):
    for syntax in ("a1111", "comfy"):
        p = _quiet_parse(text, syntax=syntax)
        assert all(0 <= s.start < s.end <= len(p.text) and 0 <= s.weight <= MAX_WEIGHT for s in p.spans)
    assert _quiet_parse(text).text == _a1111_reference(text)[1]


_words = st.text(alphabet="abcxyz ", min_size=1, max_size=8)


@st.composite
def _well_formed(draw, depth=0):
    parts, plain = [], []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["word", "round", "square", "weight"] if depth < 2 else ["word"]))
        if kind == "word":
            w = draw(_words)
            parts.append(w)
            plain.append(w)
        else:
            inner, inner_plain = draw(_well_formed(depth + 1))
            plain.append(inner_plain)
            if kind == "round":
                parts.append(f"({inner})")
            elif kind == "square":
                parts.append(f"[{inner}]")
            else:
                parts.append(f"({inner}:{draw(st.sampled_from(['0.5', '1.25', '2', '0']))})")
    return "".join(parts), "".join(plain)


@settings(max_examples=200, deadline=None)
@given(_well_formed())
def test_well_formed_prompts_strip_to_their_words(pair):
    text, plain = pair
    p = parse_emphasis(text, strict=True)
    assert p.text == plain
    assert all(0 <= s.start < s.end <= len(p.text) for s in p.spans)
    assert p == parse_emphasis(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc xyz,.!?:", max_size=40))
def test_no_syntax_round_trips(text):
    for syntax in ("a1111", "comfy"):
        p = parse_emphasis(text, syntax=syntax)
        assert p.text == text and p.spans == ()


# --- linear time ----------------------------------------------------------------------------------------------
def _best_time(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


_TYPICAL = "masterpiece, (best quality:1.2), ((ultra detailed)), [blurry], (red hair:1.1), a cat smiling :) BREAK "


# Prompt shapes, built at n units (n = 100_000 gives about 100k characters).
_SHAPES = {
    "typical": lambda n: (_TYPICAL * (n // len(_TYPICAL) + 1))[:n],
    "plain": lambda n: ("a red circle above a blue square, " * (n // 34 + 1))[:n],
    "stray closers": lambda n: "a :) " * (n // 5),
    "colons": lambda n: "(" + "a:" * (n // 2),
    "nested square": lambda n: "[" * (n // 2) + "a" + "]" * (n // 2),
    "nested round, closed by weights": lambda n: "(" * (n // 4) + "a" + ":1)" * (n // 4),
}


@pytest.mark.parametrize("syntax", ["a1111", "comfy"])
@pytest.mark.parametrize("name", list(_SHAPES))
def test_parsing_is_linear(name, syntax):
    """Linear, not quadratic: the same prompt shape 10x longer takes well under 100x as long (a ratio of two runs
    on the same machine, robust to a busy CI), and 100k characters stay well under a second (0.003-0.05 s
    measured on an idle 2-core machine, against the 0.1 s target)."""
    build = _SHAPES[name]
    long = _best_time(lambda: _quiet_parse(build(100_000), syntax=syntax))
    short = _best_time(lambda: _quiet_parse(build(10_000), syntax=syntax))
    assert long < 30 * max(short, 1e-4), f"{name}: {long:.3f} s vs {short:.4f} s at a tenth of the length"
    assert long < 1.0, f"{name}: {long:.3f} s for 100k characters"


@pytest.mark.parametrize("syntax", ["a1111", "comfy"])
def test_50k_nested_brackets_fail_fast(syntax):
    text = "(" * 50_000 + "a" + ")" * 50_000  # 1.1^50000: out of range

    def parse():
        with pytest.raises(PromptSyntaxError, match="allowed range"):
            parse_emphasis(text, syntax=syntax)

    assert _best_time(parse) < 1.0  # (0.02-0.05 s measured on an idle 2-core machine; a busy CI is slower)
    assert _best_time(lambda: parse_emphasis("(" * 50_000 + "a", syntax="comfy")) < 1.0  # ComfyUI: text


@pytest.fixture(scope="module")
def bpe_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["a red circle above a blue square", "a green star", "the yellow triangle", "circle circle square"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=40, special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def test_multi_token_words_get_the_weight_on_every_piece(bpe_tokenizer):
    prompt = "a (rainbowcircle:2) above"
    enc = bpe_tokenizer(parse_emphasis(prompt).text, return_offsets_mapping=True)
    pieces = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s >= 2 and e <= 16 and e > s]
    assert len(pieces) >= 2  # the word really splits
    w = token_weights(bpe_tokenizer, prompt, max_length=40)
    assert all(w[i] == 2.0 for i in pieces)
    assert w.sum().item() == pytest.approx(40 + len(pieces))  # everything else (padding too) is 1


def test_truncation_drops_spans_past_the_cut(bpe_tokenizer):
    w = token_weights(bpe_tokenizer, "a red circle (above:3)", max_length=3)
    assert w.shape == (3,) and torch.all(w == 1)


def test_slow_tokenizer_rejected():
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="not a fast tokenizer"):
        token_weights(Slow(), "a", max_length=4)


@pytest.mark.parametrize("family", ["sd3", "flux", "wan", "hunyuan_video", "cogvideox"])
def test_pipeline_weights_align_with_the_text_sequence(family):
    from dit_attn.testing import tiny_call_kwargs, tiny_pipeline

    pipe = tiny_pipeline(family)
    kwargs = tiny_call_kwargs(family)
    seen = {}

    def spy(module, args, kw):
        seen["text"] = kw["encoder_hidden_states"]

    handle = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    kwargs.update(num_inference_steps=1)
    pipe(**kwargs)
    handle.remove()
    w = pipeline_text_weights(pipe, "a (red:2) circle above a blue square",
                              max_sequence_length=kwargs.get("max_sequence_length"),
                              prompt_template=kwargs.get("prompt_template"))
    assert w.shape[0] == seen["text"].shape[1]
    assert (w == 2).sum() >= (2 if family == "sd3" else 1)  # SD3: in the CLIP and the T5 segment
