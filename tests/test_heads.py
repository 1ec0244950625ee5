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


# --- head lists in the forms the HeadHunter paper and its code print -------------------------------------------
@pytest.mark.parametrize("form", [
    "L38H18", "l38h18", "L38 H18", " l 38  h 18 ", "L38,H18", "(L38,H18)", "( l38 , h18 )", "{L38 H18}",
    "[L38H18]", "38,18", " 38 , 18 ", "(38, 18)", "[(38, 18)]", "L38H18;", "{L38 H18, (L38,H18)}; 38:18",
])
def test_pasted_pair_forms_equal_paper_form(form):
    hs = HeadSet.parse(form)
    assert hs == HeadSet.parse("L38H18") and hs.entries == {LayerKey(None, 38): {18}}
    assert hs.to_spec() == "L38:18" and HeadSet.parse(hs.to_spec()) == hs


@pytest.mark.parametrize("form", [
    "L38H18, L52H12", "L38 H18, L52 H12", "{L38 H18, L52 H12}", "{L38 H18,\n L52 H12}", "(L38,H18), (L52,H12)",
    "(L38, H18) (L52, H12)", "38,18\n52,12", "38,18; 52,12", "\n  38,18\n\n52, 12\n", "[(38, 18), (52, 12)]",
    "L38H18\nl52 h12",
])
def test_pasted_list_forms_equal_paper_form(form):
    hs = HeadSet.parse(form)
    assert hs == HeadSet.parse("L38H18, L52H12") == HeadSet.parse("L38:18; L52:12")
    assert HeadSet.parse(hs.to_spec()) == hs


def test_pasted_forms_map_like_paper_form_on_flux():
    t = _FLUX  # flat 0-1 double, 2-4 single
    expected = HeadSet.parse("L1H0, L2H1").validate(t)
    assert expected == HeadSet.parse("transformer_blocks.1:0; single_transformer_blocks.0:1")
    for form in ("(L1,H0), (L2,H1)", "{L1 H0, L2 H1}", "1,0\n2,1"):
        assert HeadSet.parse(form).validate(t) == expected


@pytest.mark.parametrize("bad, piece", [
    ("38,18,5", "'38,18,5'"), ("38,18, 52,12", "'38,18, 52,12'"), ("L38H18, L52X12", "'L52X12'"),
    ("(L38,H18", "'(L38,H18'"), ("{L38 H18", "'{L38'"), ("L38H18L52H12", "'L38H18L52H12'"), ("L38", "'L38'"),
    ("(38,18,1)", "'(38,18,1)'"), ("L-1H2", "'L-1H2'"), ("L38H018", "'L38H018'"), ("{}", "it is empty"),
    ('{"layers": []}', "head-set JSON"),
])
def test_bad_pasted_forms_name_piece_and_forms(bad, piece):
    with pytest.raises(ValueError) as e:
        HeadSet.parse(bad)
    msg = str(e.value)
    assert msg.startswith("bad head spec") and piece in msg
    for form in ("'transformer_blocks.11:15,18'", "'L38H18'", "'L38 H18'", "'(L38,H18)'", "'{L38 H18, L52 H12}'",
                 "'38,18'"):
        assert form in msg


def test_from_file_text_json_and_errors(tmp_path):
    ref = HeadSet.parse("L38H18, L52H12")
    lines = tmp_path / "heads.txt"
    lines.write_text("# HeadHunter search output\nlayer,head\n38,18\n\n52,12   # green filter\n")
    hs = HeadSet.from_file(lines)
    assert hs == ref and hs.source == str(lines)
    (tmp_path / "paper.txt").write_text("{L38 H18,\n L52 H12}\n")
    assert HeadSet.from_file(tmp_path / "paper.txt") == ref
    saved = HeadSet.parse("transformer_blocks.1:0; L38H18", source="mine").save(tmp_path / "saved.json")
    assert HeadSet.from_file(saved) == HeadSet.parse("transformer_blocks.1:0; L38:18")
    assert HeadSet.from_file(saved).source == "mine"
    (tmp_path / "pairs.json").write_text("[[38, 18], [52, 12]]")
    assert HeadSet.from_file(tmp_path / "pairs.json") == ref

    (tmp_path / "bad.txt").write_text("38,18\n52;12\n")
    with pytest.raises(ValueError, match=r"bad.txt.*bad head spec.*'52'.*Accepted forms"):
        HeadSet.from_file(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="empty.txt.*holds no heads"):
        HeadSet.from_file(tmp_path / "empty.txt")
    (tmp_path / "broken.json").write_text('{"layers": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        HeadSet.from_file(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="does not exist"):
        HeadSet.from_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="not a file"):
        HeadSet.from_file(tmp_path)
