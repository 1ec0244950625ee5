"""Head sets: which attention heads of which layers a head-level control (SoftPAG) acts on.

A :class:`HeadSet` maps layers to heads. A layer is named either explicitly, by block list and block index
(``"transformer_blocks.11"``, optionally with the attention attribute: ``"transformer_blocks.0.attn2"``), or by its
*flat* index over the block lists in model order (``"38"`` or ``"L38"``; FLUX: 0-18 = ``transformer_blocks``,
19-56 = ``single_transformer_blocks``, as in the HeadHunter paper; HunyuanVideo 0-19 / 20-59; SD3, Wan and
CogVideoX have one block list, so flat = block index). Matching is by exact integers only — never regex or
substring (``"blocks.1"`` never means ``blocks.10``).

Spec syntax (entries separated by ``;`` or new lines)::

    transformer_blocks.11:15,18          # heads 15 and 18 of transformer_blocks[11]
    single_transformer_blocks.20:3       # head 3 of single_transformer_blocks[20]
    transformer_blocks.9:*               # every head of block 9 (also "all")
    transformer_blocks.2:0-3             # heads 0, 1, 2, 3
    11:15,18                             # flat layer 11
    L38H18, L52H12                       # paper style: flat layer 38 head 18, flat layer 52 head 12
    L38 H18   (L38,H18)   {L38 H18, L52 H12}   # the same pairs as the paper and its code print them
    38,18                                # one "layer,head" pair per line (the search output files)

Paper-style pairs ignore case and spaces (``l38 h18``); :meth:`HeadSet.from_file` reads a file of any of these (or
a head-set JSON).

Example:
    >>> from dit_attn import HeadSet
    >>> hs = HeadSet.parse("transformer_blocks.11:15,18; single_transformer_blocks.20:3; L38H18")
    >>> hs.to_spec()
    'single_transformer_blocks.20:3; transformer_blocks.11:15,18; L38:18'
    >>> HeadSet.parse(hs.to_spec()) == hs
    True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

ALL = "*"  # "every head of this layer"
FORMAT = "dit_attn.heads/1"

_INT = r"(?:0|[1-9][0-9]{0,5})"  # plain non-negative integers (no signs, no leading zeros, < 10^6)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_LAYER_EXPLICIT = re.compile(rf"^({_IDENT})\.({_INT})(?:\.({_IDENT}))?$")
_LAYER_FLAT = re.compile(rf"^(?:[Ll]\s*)?({_INT})$")
# Paper-style pairs, as the HeadHunter paper and its code write them: "L38H18", "L38 H18", "(L38,H18)" (any case,
# any spaces), and "(38,18)" tuples; several per entry separated by ',' or spaces ("{L38 H18, L52 H12}").
_PAPER_CORE = rf"L\s*({_INT})\s*,?\s*H\s*({_INT}|\*)"
_PAIR_TOKEN = re.compile(rf"\(\s*{_PAPER_CORE}\s*\)|{_PAPER_CORE}|\(\s*({_INT})\s*,\s*({_INT})\s*\)", re.I)
_BARE_PAIR = re.compile(rf"^({_INT})\s*,\s*({_INT})$")  # "38,18": one (layer, head) per line, as search files
_RANGE = re.compile(rf"^({_INT})-({_INT})$")
_WRAPPERS = {"{": "}", "[": "]"}
_SEPARATORS = re.compile(r"[\s,]*")
FORMS = ("'transformer_blocks.11:15,18', 'single_transformer_blocks.20:3', 'transformer_blocks.9:*', "
         "flat '11:15,18', paper-style 'L38H18' / 'L38 H18' / '(L38,H18)' / '{L38 H18, L52 H12}', "
         "or one 'layer,head' pair per line ('38,18')")


@dataclass(frozen=True, order=True)
class LayerKey:
    """One attention layer: ``block_list=None`` means ``index`` is the flat layer index.

    ``attn`` names the attention attribute of the block (SD3.5 ``"attn2"``); ``None`` = the block's main attention
    (SD3/FLUX/HunyuanVideo ``attn``, Wan ``attn1``, CogVideoX ``attn1``).
    """

    block_list: str | None
    index: int
    attn: str | None = None

    def __str__(self) -> str:
        if self.block_list is None:
            return f"L{self.index}"
        return f"{self.block_list}.{self.index}" + (f".{self.attn}" if self.attn else "")


def _bad(spec: str, why: str) -> ValueError:
    shown = spec if len(spec) <= 120 else spec[:100] + "..." + spec[-15:]
    return ValueError(f"bad head spec {shown!r}: {why}. Accepted forms: {FORMS}; entries separated by ';' or new "
                      "lines")


def _unwrap(text: str) -> str:
    """``text`` without one pair of enclosing ``{}`` / ``[]`` (pasted Python sets and lists)."""
    text = text.strip()
    if len(text) >= 2 and _WRAPPERS.get(text[0]) == text[-1]:
        return text[1:-1].strip()
    return text


def _piece(text: str, pos: int) -> str:
    """The unparsable piece of ``text`` at ``pos`` (up to the next separator, or the closing ')')."""
    rest = text[pos:]
    if rest.startswith("("):
        end = rest.find(")")
        return rest[:end + 1] if end >= 0 else rest
    return re.match(r"[^,\s]*", rest).group(0) or rest[:1]


def _parse_pairs(part: str, spec: str) -> list[tuple[int, int | str]]:
    """(flat layer, head) pairs of an entry without ':' (paper style, tuples, or one bare 'layer,head' pair)."""
    text = _unwrap(part)
    m = _BARE_PAIR.match(text)
    if m:
        return [(int(m.group(1)), int(m.group(2)))]
    pairs, pos = [], 0
    while True:
        pos = _SEPARATORS.match(text, pos).end()
        if pos >= len(text):
            break
        m = _PAIR_TOKEN.match(text, pos)
        if m is None or (m.end() < len(text) and text[m.end()] not in " \t,"):
            piece = _piece(text, pos)
            why = f"{piece!r} is not a layer/head pair like 'L38H18'"
            if re.fullmatch(r"[0-9,\s]+", text) and text.count(",") > 1:
                why = f"{text!r} is not one 'layer,head' pair (a bare pair is two integers, alone on its line)"
            elif piece == text and re.fullmatch(_IDENT + r"\.[0-9]+(?:\.[A-Za-z_0-9]+)?|[Ll]?\s*[0-9]+", piece):
                why = f"entry {part.strip()!r} has no ':' between layer and heads"
            raise _bad(spec, why)
        g = m.groups()
        layer, head = next((g[i], g[i + 1]) for i in (0, 2, 4) if g[i] is not None)
        pairs.append((int(layer), ALL if head == ALL else int(head)))
        pos = m.end()
    if not pairs:
        raise _bad(spec, f"entry {part.strip()!r} holds no heads")
    return pairs


def _parse_heads(text: str, spec: str) -> frozenset[int] | str:
    text = text.strip()
    if text in ("*", "all"):
        return ALL
    if not text:
        raise _bad(spec, "no heads after ':'")
    heads: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(_INT, part):
            heads.add(int(part))
            continue
        m = _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise _bad(spec, f"head range {part!r} is empty (end < start)")
            if hi - lo > 4096:
                raise _bad(spec, f"head range {part!r} is implausibly large")
            heads.update(range(lo, hi + 1))
            continue
        raise _bad(spec, f"{part!r} is not a head index (non-negative integer), a range 'a-b', or '*'")
    return frozenset(heads)


def _parse_layer(text: str, spec: str) -> LayerKey:
    text = text.strip()
    m = _LAYER_EXPLICIT.match(text)
    if m:
        return LayerKey(m.group(1), int(m.group(2)), m.group(3))
    m = _LAYER_FLAT.match(text)
    if m:
        return LayerKey(None, int(m.group(1)))
    raise _bad(spec, f"{text!r} is not a layer (use 'block_list.index', 'block_list.index.attn', 'N' or 'LN')")


@dataclass(frozen=True)
class HeadSet:
    """An immutable set of (layer, head) pairs. Build with :meth:`parse`, :meth:`from_pairs`, :meth:`load` or
    :meth:`preset`; check against a model with :meth:`validate`.

    ``entries`` maps :class:`LayerKey` to a frozenset of head indices or :data:`ALL`. ``source`` is a free-text
    label (where the heads come from), kept through JSON.

    Example (build, combine, then resolve against a model: the tiny SD3 transformer has 2 blocks of 2 heads):
        >>> from dit_attn import HeadSet
        >>> from dit_attn.testing import tiny_transformer
        >>> hs = HeadSet.from_pairs([("transformer_blocks", 1, 0)]) | HeadSet.parse("L0:*")
        >>> hs, len(hs)
        (HeadSet.parse('transformer_blocks.1:0; L0:*'), 2)
        >>> transformer = tiny_transformer("sd3")
        >>> hs.pairs(transformer)
        [('transformer_blocks', 0, 0), ('transformer_blocks', 0, 1), ('transformer_blocks', 1, 0)]
        >>> HeadSet.from_json(hs.to_json()) == hs
        True
        >>> HeadSet.parse("transformer_blocks.5:0").validate(transformer)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: head set 'transformer_blocks.5:0' does not fit this ...: transformer_blocks has no block 5 (0-1)...
    """

    entries: Mapping[LayerKey, frozenset[int] | str] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: "str | HeadSet", source: str | None = None) -> "HeadSet":
        """Parse a spec string (syntax in the module docstring). Raises ``ValueError`` naming what is wrong."""
        if isinstance(spec, HeadSet):
            return spec
        if not isinstance(spec, str):
            raise ValueError(f"a head spec must be a string; got {type(spec).__name__}")
        entries: dict[LayerKey, frozenset[int] | str] = {}
        if spec.lstrip().startswith('{"'):
            raise _bad(spec, "this looks like head-set JSON; read it with HeadSet.from_json or HeadSet.from_file")
        parts = [p.strip() for p in re.split(r"[;\n]", _unwrap(spec)) if p.strip()]
        if not parts:
            raise _bad(spec, "it is empty")
        for part in parts:
            if ":" not in part:
                # Paper style, possibly several: "L38H18, L52H12", "{L38 H18, L52 H12}", "(L11,H15)", or "38,18"
                for layer, head in _parse_pairs(part, spec):
                    cls._merge(entries, LayerKey(None, layer), ALL if head == ALL else frozenset({head}))
                continue
            if part.count(":") != 1:
                raise _bad(spec, f"entry {part!r} has more than one ':'")
            layer_text, heads_text = part.split(":")
            cls._merge(entries, _parse_layer(layer_text, spec), _parse_heads(heads_text, spec))
        return cls(entries, source)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple], source: str | None = None) -> "HeadSet":
        """From ``(block_list, block_index, head)`` or ``(flat_layer, head)`` tuples (``head`` may be ``"*"``)."""
        entries: dict[LayerKey, frozenset[int] | str] = {}
        for pair in pairs:
            pair = tuple(pair)
            if len(pair) == 3 and isinstance(pair[0], str):
                key, head = LayerKey(pair[0], _nonneg(pair[1], "block index")), pair[2]
            elif len(pair) == 2:
                key, head = LayerKey(None, _nonneg(pair[0], "flat layer index")), pair[1]
            else:
                raise ValueError(f"head pairs are (block_list, block_index, head) or (flat_layer, head); got {pair!r}")
            cls._merge(entries, key, ALL if head in (ALL, "all") else frozenset({_nonneg(head, "head")}))
        return cls(entries, source)

    @staticmethod
    def _merge(entries, key: LayerKey, heads) -> None:
        old = entries.get(key)
        if old is None:
            entries[key] = heads
        else:
            entries[key] = ALL if ALL in (old, heads) else frozenset(old | heads)

    def union(self, other: "HeadSet") -> "HeadSet":
        entries = dict(self.entries)
        for key, heads in other.entries.items():
            self._merge(entries, key, heads)
        return HeadSet(entries, self.source)

    __or__ = union

    # --- queries --------------------------------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        """Number of (layer, head) pairs; a ``*`` layer counts as 1 until resolved against a model."""
        return sum(1 if h == ALL else len(h) for h in self.entries.values())

    def __iter__(self) -> Iterator[tuple[LayerKey, int | str]]:
        for key in sorted(self.entries, key=_key_order):
            heads = self.entries[key]
            if heads == ALL:
                yield key, ALL
            else:
                yield from ((key, h) for h in sorted(heads))

    def __hash__(self) -> int:
        return hash(frozenset(self.entries.items()))

    def __eq__(self, other) -> bool:
        return isinstance(other, HeadSet) and dict(self.entries) == dict(other.entries)

    def heads_for(self, block_list: str | None, block_index: int | None, layer_index: int | None,
                  attn: str | None, main_attn: str | None, num_heads: int) -> list[int]:
        """Sorted head indices selected in one attention module (``[]`` if none).

        ``attn`` is the module's attribute name (``"attn"``, ``"attn2"``...), ``main_attn`` the block's main one.
        """
        selected: set[int] = set()
        for key, heads in self.entries.items():
            if key.block_list is None:
                if layer_index != key.index or attn != main_attn:
                    continue
            elif key.block_list != block_list or key.index != block_index or (key.attn or main_attn) != attn:
                continue
            selected.update(range(num_heads) if heads == ALL else (h for h in heads if h < num_heads))
        return sorted(selected)

    # --- text / JSON ----------------------------------------------------------------------------------------
    def to_spec(self) -> str:
        """The canonical spec string; ``HeadSet.parse(hs.to_spec()) == hs``."""
        parts = []
        for key in sorted(self.entries, key=_key_order):
            heads = self.entries[key]
            parts.append(f"{key}:{ALL if heads == ALL else ','.join(map(str, sorted(heads)))}")
        return "; ".join(parts)

    __str__ = to_spec

    def __repr__(self) -> str:
        return f"HeadSet.parse({self.to_spec()!r})"

    def to_dict(self) -> dict:
        layers = []
        for key in sorted(self.entries, key=_key_order):
            heads = self.entries[key]
            item: dict = {"layer": key.index} if key.block_list is None else {"block_list": key.block_list,
                                                                             "block": key.index}
            if key.attn:
                item["attn"] = key.attn
            item["heads"] = ALL if heads == ALL else sorted(heads)
            layers.append(item)
        out = {"format": FORMAT, "spec": self.to_spec(), "layers": layers}
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "HeadSet":
        if not isinstance(data, dict) or "layers" not in data:
            raise ValueError(f"a head-set JSON object needs a 'layers' list (format {FORMAT!r})")
        if not isinstance(data["layers"], list):
            raise ValueError(f"'layers' of a head-set JSON must be a list; got {data['layers']!r}")
        entries: dict[LayerKey, frozenset[int] | str] = {}
        for item in data["layers"]:
            if not isinstance(item, dict) or "heads" not in item:
                raise ValueError(f"each head-set layer needs 'heads' and 'layer' or 'block_list'+'block'; got {item!r}")
            if "block_list" in item:
                if not isinstance(item["block_list"], str) or not re.fullmatch(_IDENT, item["block_list"]):
                    raise ValueError(f"bad block_list {item['block_list']!r}")
                attn = item.get("attn")
                if attn is not None and (not isinstance(attn, str) or not re.fullmatch(_IDENT, attn)):
                    raise ValueError(f"bad attention attribute {attn!r}")
                key = LayerKey(item["block_list"], _nonneg(item.get("block"), "block"), attn)
            else:
                key = LayerKey(None, _nonneg(item.get("layer"), "layer"))
            heads = item["heads"]
            if heads in (ALL, "all"):
                value = ALL
            elif isinstance(heads, list):
                value = frozenset(_nonneg(h, "head") for h in heads)
            else:
                raise ValueError(f"'heads' must be a list of integers or '*'; got {heads!r}")
            cls._merge(entries, key, value)
        source = data.get("source")
        return cls(entries, source if isinstance(source, str) else None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "HeadSet":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a head-set JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path) -> "HeadSet":
        """Load a JSON file written by :meth:`save` (or by ``dit-attn heads search``)."""
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_file(cls, path) -> "HeadSet":
        """A head set from a file: head-set JSON (:meth:`save`, ``dit-attn heads search``'s ``heads.json``), a JSON
        list of ``[layer, head]`` / ``[block_list, block, head]`` pairs, or text in any :meth:`parse` form — e.g.
        the HeadHunter search's output with one ``layer,head`` pair per line (``38,18``). Blank lines, ``#``
        comments and a ``layer,head`` header line are skipped. Errors name the file.

        Example:
            >>> import tempfile, os
            >>> from dit_attn import HeadSet
            >>> with tempfile.TemporaryDirectory() as d:
            ...     path = os.path.join(d, "heads.txt")
            ...     with open(path, "w") as f:
            ...         _ = f.write("layer,head\\n38,18\\n52,12  # green filter\\n")
            ...     hs = HeadSet.from_file(path)
            >>> hs == HeadSet.parse("L38H18, L52H12"), hs.to_spec()
            (True, 'L38:18; L52:12')
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"head-set file {str(path)!r} does not exist" if not path.exists()
                             else f"head-set file {str(path)!r} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read head-set file {str(path)!r}: {e}") from None
        stripped = text.strip()
        try:
            if stripped.startswith(("{", "[")):
                try:
                    data = json.loads(stripped)
                except json.JSONDecodeError as e:
                    if path.suffix.lower() == ".json" or stripped.startswith('{"'):
                        raise ValueError(f"not valid JSON: {e}") from None
                    data = None  # "{L38 H18, L52 H12}" or "[(38, 18)]": text
                if isinstance(data, dict):
                    hs = cls.from_dict(data)
                    return hs if hs.source else cls(hs.entries, str(path))
                if isinstance(data, list):
                    if not all(isinstance(p, list) for p in data):
                        raise ValueError("a JSON list of heads holds [layer, head] or [block_list, block, head] pairs")
                    return cls.from_pairs(data, source=str(path))
                if data is not None:
                    raise ValueError(f"expected a head-set JSON object or a list of pairs; got {type(data).__name__}")
            lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
            lines = [line for line in lines if line]
            if lines and re.fullmatch(r"layers?\s*,\s*heads?", lines[0], re.I):
                lines = lines[1:]
            if not lines:
                raise ValueError("it holds no heads")
            return cls.parse("\n".join(lines), source=str(path))
        except ValueError as e:
            raise ValueError(f"head-set file {str(path)!r}: {e}") from None

    # --- model ----------------------------------------------------------------------------------------------
    @staticmethod
    def model_layers(transformer) -> list[tuple[str, int, str, int, str]]:
        """``(block_list, block_index, attn_attribute, heads, kind)`` of every attention module SoftPAG may touch."""
        from .families import attention_sites, family_of

        family = family_of(transformer)
        return [(bl, i, name.rsplit(".", 1)[1], int(module.heads), kind)
                for name, bl, i, kind, module in attention_sites(transformer, family)]

    def validate(self, transformer) -> "HeadSet":
        """Check every entry exists in ``transformer``; returns the set with flat indices resolved to block lists.

        Raises ``ValueError`` listing the valid block lists, their layer counts and head counts.
        """
        from .families import family_of

        family = family_of(transformer)
        mains = {}
        for bl, attr, _ in family.sites:
            mains.setdefault(bl, attr)
        layers = self.model_layers(transformer)
        modules = {(bl, i, attr): (heads, kind) for bl, i, attr, heads, kind in layers}
        order = list(dict.fromkeys(bl for bl, *_ in layers))
        counts = {bl: 1 + max(i for b, i, *_ in layers if b == bl) for bl in order}
        offsets, total = {}, 0
        for bl in order:
            offsets[bl] = total
            total += counts[bl]
        heads_of = {bl: sorted({h for b, _, a, h, _ in layers if b == bl and a == mains[bl]}) for bl in order}
        summary = "; ".join(
            f"{bl}: {counts[bl]} layers (flat {offsets[bl]}-{offsets[bl] + counts[bl] - 1}), "
            f"{'/'.join(map(str, heads_of[bl]))} heads" for bl in order)
        attrs = sorted({a for _, _, a, _, _ in layers})

        def fail(why):
            return ValueError(f"head set {self.to_spec()!r} does not fit this {type(transformer).__name__}: {why}. "
                              f"Valid: {summary}; attention attributes {attrs}")

        resolved: dict[LayerKey, frozenset[int] | str] = {}
        for key, heads in self.entries.items():
            if key.block_list is None:
                if key.index >= total:
                    raise fail(f"flat layer {key.index} is out of range 0-{total - 1}")
                bl = next(b for b in reversed(order) if offsets[b] <= key.index)
                rkey = LayerKey(bl, key.index - offsets[bl])
            else:
                if key.block_list not in counts:
                    raise fail(f"no block list {key.block_list!r}")
                if key.index >= counts[key.block_list]:
                    raise fail(f"{key.block_list} has no block {key.index} (0-{counts[key.block_list] - 1})")
                rkey = key if key.attn != mains[key.block_list] else LayerKey(key.block_list, key.index)
            attr = rkey.attn or mains[rkey.block_list]
            module = modules.get((rkey.block_list, rkey.index, attr))
            if module is None:
                raise fail(f"{rkey.block_list}.{rkey.index} has no attention '{attr}'")
            n_heads, kind = module
            if kind in ("cross", "cross_image"):
                raise fail(f"{rkey} is cross-attention ({kind}); perturbation guidance never touches it")
            if heads != ALL:
                bad = sorted(h for h in heads if h >= n_heads)
                if bad:
                    raise fail(f"{rkey} has {n_heads} heads (0-{n_heads - 1}); got head(s) {bad}")
            self._merge(resolved, rkey, heads)
        return HeadSet(resolved, self.source)

    def pairs(self, transformer) -> list[tuple[str, int, int]]:
        """Every ``(block_list, block_index, head)`` of the set in ``transformer`` (``*`` expanded)."""
        resolved = self.validate(transformer)
        n_heads = {(bl, i, a): h for bl, i, a, h, _ in self.model_layers(transformer)}
        from .families import family_of

        mains = {}
        for bl, attr, _ in family_of(transformer).sites:
            mains.setdefault(bl, attr)
        out = []
        for key, heads in resolved:
            n = n_heads[(key.block_list, key.index, key.attn or mains[key.block_list])]
            out.extend((key.block_list, key.index, h) for h in (range(n) if heads == ALL else [heads]))
        return out

    # --- presets --------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "HeadSet":
        """A published head set by name (see :data:`PRESETS`); ``ValueError`` lists the names."""
        if name not in PRESETS:
            raise ValueError(f"unknown head-set preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        spec, source = PRESETS[name]
        return cls.parse(spec, source=source)


def _nonneg(x, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise ValueError(f"{what} must be a non-negative integer; got {x!r}")
    return x


def _key_order(key: LayerKey):
    return (key.block_list is None, key.block_list or "", key.index, key.attn or "")


_HH = "HeadHunter, arXiv 2506.10978 v4"
_SD3 = f"{_HH}: SD3-medium head, single-concept illustration"
_FLUX = (f"{_HH}: FLUX.1-dev flat index (0-18 double, 19-56 single; mapping unverified, the FLUX code is "
         "unpublished), single-concept illustration")

#: name -> (spec, source). No general-quality head list is published; these are the paper's illustrations.
PRESETS: dict[str, tuple[str, str]] = {
    "sd3-medium/dark-lighting": ("transformer_blocks.1:10", _SD3),
    "sd3-medium/shearing": ("transformer_blocks.11:15", _SD3),
    "sd3-medium/shadow": ("transformer_blocks.13:17", _SD3),
    "sd3-medium/blue": ("transformer_blocks.0:23", _SD3),
    "sd3-medium/red": ("transformer_blocks.0:3", _SD3),
    "sd3-medium/horizontal-banding": ("transformer_blocks.16:3", _SD3),
    "sd3-medium/fine-detail": ("transformer_blocks.14:7", _SD3),
    "sd3-medium/rainbow-neon": ("transformer_blocks.14:17", _SD3),
    "sd3-medium/white": ("transformer_blocks.0:15; transformer_blocks.1:19", _SD3),
    "sd3-medium/dark": ("transformer_blocks.1:2,10", _SD3),
    "sd3-medium/golden-hour": ("transformer_blocks.18:11; transformer_blocks.0:17; transformer_blocks.2:3",
                               f"{_HH}: SD3-medium heads added by the golden-hour style search"),
    "sd3-medium/layer9": ("transformer_blocks.9:*", f"{_HH}: SoftPAG figures perturb all heads of layer 9"),
    "flux-dev/golden-hour": ("L38H18", _FLUX),
    "flux-dev/green-filter": ("L52H12", _FLUX),
    "flux-dev/glossy": ("L43H17", _FLUX),
    "flux-dev/smooth-bokeh": ("L34H0", _FLUX),
    "flux-dev/cool-tone": ("L52H6", _FLUX),
    "flux-dev/warm-red": ("L52H22", _FLUX),
    "flux-dev/vintage-film": ("L51H23", _FLUX),
}
