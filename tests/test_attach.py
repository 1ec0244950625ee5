"""Foundation acceptance: exact reproduction of stock output, exact restore, layouts, backends, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend

import inspect

import dit_attn
from dit_attn.families import FAMILIES as FAMILY_DATA
from dit_attn.families import processors_of, set_processors
from dit_attn.testing import FAMILIES, tiny_call_kwargs, tiny_pipeline


def _install(transformer, processors) -> None:
    """The diffusers way: ``set_attn_processor`` where the model has it, else each module's ``set_processor``."""
    if hasattr(transformer, "set_attn_processor"):
        transformer.set_attn_processor(processors)
    else:
        set_processors(transformer, processors)


def _output(result) -> np.ndarray:
    for name in ("images", "frames"):
        if hasattr(result, name):
            return np.asarray(getattr(result, name), dtype=np.float64)
    raise AssertionError(f"unexpected pipeline output {type(result)}")


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    return request.param, tiny_pipeline(request.param)


def test_attach_without_controls_equals_stock_and_detach_restores(family_pipe):
    family, pipe = family_pipe
    kwargs = tiny_call_kwargs(family, steps=2)
    stock = _output(pipe(**kwargs))
    originals = processors_of(pipe.transformer)
    forward_before = pipe.transformer.__dict__.get("forward")

    attachment = dit_attn.attach(pipe)
    assert any(isinstance(p, dit_attn.DitAttnProcessor) for p in processors_of(pipe.transformer).values())
    attached = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    attachment.detach()

    assert np.abs(attached - stock).max() <= 1e-6
    restored = processors_of(pipe.transformer)
    assert restored.keys() == originals.keys()
    assert all(restored[name] is originals[name] for name in originals)
    assert pipe.transformer.__dict__.get("forward") is forward_before
    again = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    assert np.abs(again - stock).max() == 0


def test_pass_through_control_changes_nothing(family_pipe):
    family, pipe = family_pipe
    stock = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    control = dit_attn.PassThrough()
    with dit_attn.attach(pipe, control):
        out = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    assert np.abs(out - stock).max() <= 1e-6


def test_processors_the_diffusers_way(family_pipe):
    family, pipe = family_pipe
    stock = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    originals = processors_of(pipe.transformer)
    recorder = dit_attn.Recorder()
    _install(pipe.transformer, dit_attn.make_processors(pipe, recorder))
    try:
        out = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    finally:
        _install(pipe.transformer, originals)
        from dit_attn.state import remove_forward_hook

        remove_forward_hook(pipe.transformer)
    assert np.abs(out - stock).max() <= 1e-6
    assert recorder.layouts and {layout.step_index for layout in recorder.layouts} == {0, 1}


@pytest.mark.parametrize("steps", [2, 5])
def test_recorder_sees_correct_layout(family_pipe, steps):
    family, pipe = family_pipe
    forwards = []  # what the transformer really received, per forward
    data = FAMILY_DATA[family]
    signature = inspect.signature(pipe.transformer.forward)

    def spy(module, args, kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        forwards.append({k: bound.get(data.arguments.get(k, k)) for k in ("hidden_states", "encoder_hidden_states")})

    handle = pipe.transformer.register_forward_pre_hook(spy, with_kwargs=True)
    recorder = dit_attn.Recorder()
    try:
        with dit_attn.attach(pipe, recorder):
            pipe(**tiny_call_kwargs(family, steps=steps))
    finally:
        handle.remove()

    layouts = recorder.layouts
    cfg_forwards = 1 if data.cfg == "batched" else 2
    assert len(forwards) == steps * cfg_forwards
    calls_per_forward = len(layouts) // len(forwards)
    assert calls_per_forward * len(forwards) == len(layouts)
    n_layers = layouts[0].num_layers
    for f, inputs in enumerate(forwards):
        chunk = layouts[f * calls_per_forward:(f + 1) * calls_per_forward]
        hs, ehs = inputs["hidden_states"], inputs["encoder_hidden_states"]
        batch = len(hs)  # a tensor's first axis, or a list of per-item latents (Z-Image)
        for layout in chunk:
            assert layout.step_index == f // cfg_forwards
            assert layout.num_steps == steps
            assert layout.batch_size == batch
            first, second = data.cfg_order
            if data.cfg == "batched":
                assert layout.batch_roles == (first,) * (batch // 2) + (second,) * (batch // 2)
            else:
                assert layout.batch_roles == ((first,) if f % 2 == 0 else (second,)) * batch
            frames, height, width = layout.grid
            n_visual = frames * height * width
            assert layout.query_segments["image"][1] - layout.query_segments["image"][0] == n_visual
            # The text segment is the forward's text (HunyuanVideo 1.5 adds image and byT5 tokens to it in the
            # forward; Z-Image pads each caption to a multiple of 32).
            if "text" in layout.key_segments and layout.kind != "cross" and family != "hunyuan_video15":
                start, stop = layout.key_segments["text"]
                padded = max(-(-len(c) // 32) * 32 for c in ehs) if isinstance(ehs, list) else ehs.shape[1]
                assert stop - start == padded
                assert layout.key_segments == layout.query_segments
            assert layout.module_name.startswith(layout.block_list + ".")
            assert 0 <= layout.layer_index < n_layers
        names = [layout.module_name for layout in chunk]
        assert len(set(names)) == len(names)  # every module once per forward
        assert [layout.layer_index for layout in chunk] == sorted(layout.layer_index for layout in chunk)
    if family == "flux":
        kinds = {layout.kind for layout in layouts}
        assert kinds == {"joint", "single"}
        singles = [layout for layout in layouts if layout.kind == "single"]
        assert singles[0].layer_index == len(pipe.transformer.transformer_blocks)


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_works_under_attention_backends(family_pipe, backend):
    family, pipe = family_pipe
    with attention_backend(backend):
        stock = _output(pipe(**tiny_call_kwargs(family, steps=2)))
        with dit_attn.attach(pipe, dit_attn.PassThrough()):
            out = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    # SD3's and CogVideoX's stock processors call SDPA directly and ignore the backend; ours honour it, so under
    # another backend they differ from stock by that kernel's rounding only.
    bound = 1e-6 if family not in ("sd3", "cogvideox") or backend == "native" else 1e-5
    assert np.abs(out - stock).max() <= bound


def test_set_attention_backend_reaches_our_processors():
    pipe = tiny_pipeline("sd3")
    with dit_attn.attach(pipe):
        pipe.transformer.set_attention_backend("_native_math")
        procs = [p for p in pipe.transformer.attn_processors.values() if isinstance(p, dit_attn.DitAttnProcessor)]
        assert procs and all(str(p._attention_backend.value) == "_native_math" for p in procs)
        pipe.transformer.reset_attention_backend()


def test_attach_errors_and_context_manager():
    pipe = tiny_pipeline("sd3")
    with pytest.raises(ValueError, match="supported model families"):
        dit_attn.attach(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="pipeline"):
        dit_attn.attach(object())
    originals = dict(pipe.transformer.attn_processors)
    attachment = dit_attn.attach(pipe)
    with pytest.raises(RuntimeError, match="already attached"):
        dit_attn.attach(pipe)
    attachment.detach()
    attachment.detach()  # idempotent

    class Boom(dit_attn.Control):
        def prepare(self, call):
            raise KeyError("boom")

    with pytest.raises(KeyError):
        with dit_attn.attach(pipe, Boom()):
            pipe(**tiny_call_kwargs("sd3", steps=2))
    assert all(pipe.transformer.attn_processors[n] is p for n, p in originals.items())
    dit_attn.attach(pipe).detach()  # attachable again after the exception


def test_controls_list_is_live_between_calls():
    pipe = tiny_pipeline("flux")
    recorder = dit_attn.Recorder()
    with dit_attn.attach(pipe) as attachment:
        pipe(**tiny_call_kwargs("flux", steps=2))
        assert not recorder.layouts
        attachment.controls.append(recorder)
        pipe(**tiny_call_kwargs("flux", steps=2))
        assert recorder.layouts


class _TextBias(dit_attn.Control):
    """Adds a constant bias to the text keys (exercises the key-bias path of execute)."""

    def __init__(self, value: float):
        self.value = value

    def prepare(self, call):
        text = call.layout.key_slice("text")
        if text is not None:
            bias = torch.zeros(call.key.shape[1], dtype=torch.float32)
            bias[text] = self.value
            call.add_key_bias(bias)
        return call


def test_key_bias_path_matches_dense_reference():
    # A key bias on the text keys, through execute(), equals softmax(qk^T*scale + bias) v in fp64.
    torch.manual_seed(0)
    b, n, h, d = 2, 11, 3, 8
    q, k, v = (torch.randn(b, n, h, d) for _ in range(3))
    layout = dit_attn.Layout(family="sd3", site=None, kind="joint", heads=h, head_dim=d,
                             query_segments={"image": (0, 7), "text": (7, 11)},
                             key_segments={"image": (0, 7), "text": (7, 11)}, batch_size=b)
    call = dit_attn.AttentionCall(q, k, v, layout)
    call = _TextBias(0.7).prepare(call)
    out = dit_attn.execute(call)
    bias = torch.zeros(n, dtype=torch.float64)
    bias[7:] = 0.7
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / d ** 0.5 + bias
    ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())
    assert (out.double() - ref).abs().max() < 1e-5
    plain = dit_attn.execute(dit_attn.AttentionCall(q, k, v, layout))
    assert (plain - out).abs().max() > 1e-3  # the bias really acted


def test_key_bias_changes_pipeline_output():
    pipe = tiny_pipeline("flux")
    stock = _output(pipe(**tiny_call_kwargs("flux", steps=2)))
    with dit_attn.attach(pipe, _TextBias(0.0)):
        zero = _output(pipe(**tiny_call_kwargs("flux", steps=2)))
    with dit_attn.attach(pipe, _TextBias(3.0)):
        biased = _output(pipe(**tiny_call_kwargs("flux", steps=2)))
    assert np.abs(zero - stock).max() <= 1e-5
    assert np.abs(biased - stock).max() > 1e-4


def test_key_bias_on_some_rows_only():
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    b, n, h, d = 2, 13, 2, 8
    q, k, v = (torch.randn(b, n, h, d, generator=g) for _ in range(3))
    segs = {"image": (0, 9), "text": (9, 13)}
    layout = dit_attn.Layout(family="sd3", site=None, kind="joint", heads=h, head_dim=d, query_segments=segs,
                             key_segments=segs, batch_size=b)
    bias = torch.zeros(b, 1, n)
    bias[0, :, 9:], bias[1, :, 9:] = 1.5, -2.0  # per batch row, as CFG branches need
    out = dit_attn.execute(dit_attn.AttentionCall(q, k, v, layout, key_bias=bias, key_bias_rows=slice(0, 9)))
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / d ** 0.5
    logits[:, :, :9] += bias.double()[:, :, None, :]
    ref = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double())
    assert (out.double() - ref).abs().max() < 1e-5


def test_wan_i2v_pipeline_equals_stock():
    pipe = tiny_pipeline("wan_i2v")
    stock = _output(pipe(**tiny_call_kwargs("wan_i2v", steps=2)))
    recorder = dit_attn.Recorder()
    with dit_attn.attach(pipe, recorder):
        out = _output(pipe(**tiny_call_kwargs("wan_i2v", steps=2)))
    assert np.abs(out - stock).max() <= 1e-6
    assert "cross_image" in {layout.kind for layout in recorder.layouts}


TRANSFORMER_LEVEL = {
    "Recorder": lambda: dit_attn.Recorder(),
    "EntropyScale": lambda: dit_attn.EntropyScale(train_tokens=32),
    "RectifiedSparse": lambda: dit_attn.RectifiedSparse(sparsity=0.5, block_size=8),
}


@pytest.mark.parametrize("family", ["flux", "wan", "sd3"])
@pytest.mark.parametrize("control", list(TRANSFORMER_LEVEL))
def test_both_doors_give_the_same_result(family, control):
    """make_processors + set_attn_processor gives exactly what attach gives for transformer-level controls."""
    pipe = tiny_pipeline(family)
    with dit_attn.attach(pipe, TRANSFORMER_LEVEL[control]()):
        attached = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    stock = processors_of(pipe.transformer)
    _install(pipe.transformer, dit_attn.make_processors(pipe, TRANSFORMER_LEVEL[control]()))
    try:
        plain = _output(pipe(**tiny_call_kwargs(family, steps=2)))
    finally:
        _install(pipe.transformer, stock)
    assert np.array_equal(plain, attached)


def test_plain_door_refuses_pipeline_level_controls_and_says_what_to_use():
    pipe = tiny_pipeline("flux")
    stock_out = _output(pipe(**tiny_call_kwargs("flux", steps=2)))
    stock = processors_of(pipe.transformer)
    for control, what in ((dit_attn.Emphasis(), "encode_prompt"), (dit_attn.SoftPAG("transformer_blocks.0:0"),
                                                                     "scheduler.step")):
        with pytest.raises(ValueError, match=f"{type(control).__name__} cannot be installed with set_attn_processor"
                                             f".*{what}.*dit_attn.attach"):
            dit_attn.make_processors(pipe, control)
    with pytest.raises(TypeError, match="control instances"):
        dit_attn.make_processors(pipe, dit_attn.Recorder)
    with pytest.raises(ValueError, match="single_transformer_blocks"):  # head specs are validated: it lists them
        dit_attn.make_processors(pipe.transformer, dit_attn.SoftPAG("transformer_blocks.9:0"))
    assert all(processors_of(pipe.transformer)[n] is p for n, p in stock.items())
    assert np.array_equal(_output(pipe(**tiny_call_kwargs("flux", steps=2))), stock_out)


def test_hook_left_by_the_plain_door_neither_acts_nor_blocks_attach():
    """After set_attn_processor(stock), the forward hook make_processors registered does nothing (a SoftPAG
    there would otherwise still add batch rows) and a later attach replaces it."""
    pipe = tiny_pipeline("flux")
    stock_out = _output(pipe(**tiny_call_kwargs("flux", steps=2)))
    stock = processors_of(pipe.transformer)
    _install(pipe.transformer, dit_attn.make_processors(pipe.transformer, dit_attn.SoftPAG("transformer_blocks.0:0")))
    _install(pipe.transformer, stock)
    assert np.array_equal(_output(pipe(**tiny_call_kwargs("flux", steps=2))), stock_out)
    recorder = dit_attn.Recorder()
    with dit_attn.attach(pipe, recorder):
        out = _output(pipe(**tiny_call_kwargs("flux", steps=2)))
    assert recorder.layouts and np.abs(out - stock_out).max() <= 1e-6


def test_pipeline_level_wraps_are_undone_exactly_also_instance_attributes():
    """Controls change pipeline-level objects only through Attachment.wrap: after detach, an instance attribute
    that was there before is the very same object again, and class attributes show through again."""
    pipe = tiny_pipeline("sd3")
    mine = pipe.encode_prompt  # a bound method, stored as an instance attribute by the user
    pipe.encode_prompt = mine
    before_check = type(pipe).__dict__["check_inputs"]
    pag, emphasis = dit_attn.SoftPAG("transformer_blocks.0:0"), dit_attn.Emphasis()
    with dit_attn.attach(pipe, emphasis, pag) as attachment:
        pipe(**tiny_call_kwargs("sd3", steps=1))
        assert pipe.encode_prompt is not mine and "step" in pipe.scheduler.__dict__
        assert attachment.original(pipe, "encode_prompt") is mine
    assert pipe.__dict__["encode_prompt"] is mine
    assert "step" not in pipe.scheduler.__dict__ and "check_inputs" not in pipe.__dict__
    assert type(pipe).__dict__["check_inputs"] is before_check
