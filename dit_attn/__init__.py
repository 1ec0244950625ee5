"""dit_attn: attention control for diffusion transformers.

Attach controls to a diffusers pipeline (or pass our processors to ``set_attn_processor`` yourself)::

    import dit_attn
    from dit_attn.testing import tiny_pipeline, tiny_call_kwargs

    pipe = tiny_pipeline("sd3")
    with dit_attn.attach(pipe, dit_attn.PassThrough()):
        images = pipe(**tiny_call_kwargs("sd3")).images
"""

import importlib
from typing import TYPE_CHECKING

# Public names, imported on first use (PEP 562): ``import dit_attn`` stays cheap (no diffusers hooks, peft or
# attention dispatch until something is used), so the CLI's ``--help`` and tools that only read a name are fast.
_PUBLIC = {
    "attach": "attachment", "Attachment": "attachment",
    "AttentionCall": "call", "KeySet": "call", "SparsePlan": "call", "execute": "call",
    "available_controls": "controls", "controls_from_config": "controls",
    "Control": "controls.base", "PassThrough": "controls.base", "Recorder": "controls.base",
    "MultiCondition": "controls.conditions", "SpatialCondition": "controls.conditions",
    "SubjectCondition": "controls.conditions",
    "Emphasis": "controls.emphasis", "EntropyScale": "controls.entropy", "SoftPAG": "controls.head_guidance",
    "RectifiedSparse": "controls.sparse", "FAMILIES": "families", "search_heads": "head_search",
    "HeadSet": "heads", "COND": "layout", "UNCOND": "layout", "ForwardState": "layout", "LayerSite": "layout",
    "Layout": "layout", "DitAttnProcessor": "processor", "make_processors": "processor",
}


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    try:  # a submodule: dit_attn.families, dit_attn.testing, ...
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .attachment import Attachment, attach
    from .call import AttentionCall, KeySet, SparsePlan, execute
    from .controls import available_controls, controls_from_config
    from .controls.base import Control, PassThrough, Recorder
    from .controls.conditions import MultiCondition, SpatialCondition, SubjectCondition
    from .controls.emphasis import Emphasis
    from .controls.entropy import EntropyScale
    from .controls.head_guidance import SoftPAG
    from .controls.sparse import RectifiedSparse
    from .families import FAMILIES
    from .head_search import search_heads
    from .heads import HeadSet
    from .layout import COND, UNCOND, ForwardState, LayerSite, Layout
    from .processor import DitAttnProcessor, make_processors

__version__ = "0.1.0"

__all__ = [
    "attach", "Attachment", "Control", "EntropyScale", "Emphasis", "PassThrough", "Recorder", "AttentionCall", "KeySet", "SparsePlan",
    "execute", "Layout", "LayerSite", "ForwardState", "COND", "UNCOND", "DitAttnProcessor", "make_processors",
    "FAMILIES", "controls_from_config", "available_controls", "RectifiedSparse",
    "SoftPAG", "HeadSet", "search_heads", "MultiCondition", "SpatialCondition", "SubjectCondition",
]
