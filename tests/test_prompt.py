"""Emphasis syntax parser and span → token mapping."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dit_attn.prompt import (
    PromptSyntaxError,
    has_emphasis,
    parse_emphasis,
    pipeline_text_weights,
    strip_emphasis,
    token_weights,
)


def _spans(text):
    p = parse_emphasis(text)
    return p.text, [(p.text[s.start:s.end], round(s.weight, 4)) for s in p.spans]


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
])
def test_parser(text, clean, spans):
    assert _spans(text) == (clean, spans)


@pytest.mark.parametrize("text, message", [
    ("a (red", r"unbalanced '\(' at column 3"),
    ("a red)", r"unbalanced '\)' at column 6; use \\\)"),
    ("a (red]", r"'\]' at column 7 closes '\(' opened at column 3"),
    ("(red:-1)", r"bad weight '-1'"),
    ("(red:abc)", r"bad weight 'abc'"),
    ("[red:1.5]", r"square brackets"),
])
def test_errors_name_the_column(text, message):
    with pytest.raises(PromptSyntaxError, match=message):
        parse_emphasis(text)


def test_helpers():
    assert has_emphasis("(a)") and not has_emphasis("a b")
    assert strip_emphasis("a (b:2) [c]") == "a b c"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab :.()[]\\12", max_size=30))
def test_never_crashes_with_anything_but_a_syntax_error(text):
    try:
        p = parse_emphasis(text)
    except PromptSyntaxError:
        return
    assert all(0 <= s.start < s.end <= len(p.text) and s.weight >= 0 for s in p.spans)


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
    p = parse_emphasis(text)
    assert p.text == plain
    assert all(0 <= s.start < s.end <= len(p.text) for s in p.spans)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc xyz,.!?:", max_size=40))
def test_no_syntax_round_trips(text):
    p = parse_emphasis(text)
    assert p.text == text and p.spans == ()


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
