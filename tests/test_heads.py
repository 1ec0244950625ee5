"""HeadSet: parsing, exact matching, flat indices, JSON, validation against models, presets, fuzzed bad specs."""

import pytest
from hypothesis import given, settings, strategies as st

from dit_attn import HeadSet
from dit_attn.heads import ALL, PRESETS, LayerKey
from dit_attn.testing import tiny_transformer


def test_parse_forms_and_round_trip():
    hs = HeadSet.parse("transformer_blocks.11:15,18; single_transformer_blocks.20:3\ntransformer_blocks.9:*; "
                       "L38H18, L52H12; 7:0-2; transformer_blocks.0.attn2:1")
    assert hs.entries[LayerKey("transformer_blocks", 11)] == {15, 18}
    assert hs.entries[LayerKey("single_transformer_blocks", 20)] == {3}
    assert hs.entries[LayerKey("transformer_blocks", 9)] == ALL
    assert hs.entries[LayerKey(None, 38)] == {18} and hs.entries[LayerKey(None, 52)] == {12}
    assert hs.entries[LayerKey(None, 7)] == {0, 1, 2}
    assert hs.entries[LayerKey("transformer_blocks", 0, "attn2")] == {1}
    assert HeadSet.parse(hs.to_spec()) == hs
    assert HeadSet.from_json(hs.to_json()) == hs
    assert HeadSet.parse("transformer_blocks.1:1; transformer_blocks.1:2,1") == HeadSet.parse("transformer_blocks.1:1,2")


def test_exact_integer_matching():
    hs = HeadSet.parse("blocks.1:0")
    assert hs.heads_for("blocks", 1, 1, "attn1", "attn1", 4) == [0]
    assert hs.heads_for("blocks", 10, 10, "attn1", "attn1", 4) == []  # never a substring match
    assert hs.heads_for("blocks", 1, 1, "attn2", "attn1", 4) == []  # main attention only unless named
    flat = HeadSet.parse("L3:*")
    assert flat.heads_for("single_transformer_blocks", 1, 3, "attn", "attn", 2) == [0, 1]
    assert flat.heads_for("transformer_blocks", 3, 13, "attn", "attn", 2) == []


def test_flat_flux_mapping_and_pairs():
    t = tiny_transformer("flux")  # 2 double + 3 single blocks: flat 0-1 double, 2-4 single
    resolved = HeadSet.parse("L1H0; L2H1; L4:*").validate(t)
    assert resolved == HeadSet.parse("transformer_blocks.1:0; single_transformer_blocks.0:1; "
                                     "single_transformer_blocks.2:*")
    assert HeadSet.parse("L4:*").pairs(t) == [("single_transformer_blocks", 2, 0), ("single_transformer_blocks", 2, 1)]


@pytest.mark.parametrize("spec, needle", [
    ("L5:0", "out of range 0-4"), ("transformer_blocks.2:0", "has no block 2"), ("transformer_blocks.0:2", "2 heads"),
    ("blocks.0:0", "no block list 'blocks'"), ("transformer_blocks.0.attn2:0", "no attention 'attn2'"),
])
def test_validate_lists_what_is_valid(spec, needle):
    with pytest.raises(ValueError) as e:
        HeadSet.parse(spec).validate(tiny_transformer("flux"))
    msg = str(e.value)
    assert needle in msg and "transformer_blocks: 2 layers" in msg and "single_transformer_blocks: 3 layers" in msg


def test_wan_cross_attention_refused():
    with pytest.raises(ValueError, match="cross-attention"):
        HeadSet.parse("blocks.0.attn2:0").validate(tiny_transformer("wan"))
    HeadSet.parse("blocks.0.attn1:0; blocks.1:*").validate(tiny_transformer("wan"))


def test_presets_labelled():
    for name in PRESETS:
        hs = HeadSet.preset(name)
        assert hs and "2506.10978" in hs.source
    assert HeadSet.preset("flux-dev/golden-hour") == HeadSet.parse("L38H18")
    assert HeadSet.preset("sd3-medium/layer9") == HeadSet.parse("transformer_blocks.9:*")
    with pytest.raises(ValueError, match="available"):
        HeadSet.preset("nope")


@pytest.mark.parametrize("bad", ["", ";", "transformer_blocks.1", "transformer_blocks.1:", "transformer_blocks.1:x",
                                 "blocks.-1:0", "blocks.1:-1", "blocks.1:3-1", "L3H", "blocks.01:0", "1:2:3",
                                 "blocks.1:0,,1", "blocks..1:0", "blocks.1:1.5"])
def test_bad_specs(bad):
    with pytest.raises(ValueError, match="bad head spec"):
        HeadSet.parse(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("Lblocks_tranfmer.:;,*-H0123456789 \n\tx")), max_size=40) | st.text(max_size=30))
def test_fuzzed_specs_give_value_errors_only(text):
    t = _FLUX
    try:
        hs = HeadSet.parse(text)
    except ValueError:
        return
    assert HeadSet.parse(hs.to_spec()) == hs
    try:
        hs.validate(t)
    except ValueError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.integers(-3, 30) | st.text(max_size=5) | st.booleans(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
                        ["layers", "heads", "layer", "block", "block_list", "attn"]), c, max_size=4), max_leaves=8))
def test_fuzzed_json_gives_value_errors_only(data):
    try:
        HeadSet.from_dict(data if isinstance(data, dict) else {"layers": data})
    except ValueError:
        pass


_FLUX = tiny_transformer("flux")
