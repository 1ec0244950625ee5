"""dit_attn: attention control for diffusion transformers.

Attach controls to a diffusers pipeline (or pass our processors to ``set_attn_processor`` yourself)::

    import dit_attn
    from dit_attn.testing import tiny_pipeline, tiny_call_kwargs

    pipe = tiny_pipeline("sd3")
    with dit_attn.attach(pipe, dit_attn.PassThrough()):
        images = pipe(**tiny_call_kwargs("sd3")).images
"""

from .attach import Attachment, attach
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
