"""model_fingerprint: what a cached step (above all a CUDA graph, which checks no guards) reads."""

from __future__ import annotations

import enum
import math

import pytest
import torch
from torch import nn
from torch.testing._internal.two_tensor import TwoTensor

from credit_compile.fingerprint import MAX_CONTAINER_DEPTH, MAX_CONTAINER_ITEMS, model_fingerprint


class Mode(enum.Enum):
    FAST = 1
    EXACT = 2


class Config:
    def __init__(self):
        self.scale = 1.0
        self.rope_theta = 10000.0
        self.mode = Mode.FAST
        self.rope_scaling = {"type": "linear", "factor": 2.0}
        self.vocabulary = list(range(MAX_CONTAINER_ITEMS + 1))  # too big to be looked into


def small_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    model[0].config = Config()
    model[0].soft_cap = float("nan")
    model[0].cache = torch.zeros(3)
    model[0].head_scales = [1.0, (2, 3)]
    model[0].compute_dtype = torch.float32
    return model.eval()


CHANGES = {
    "weights cast": lambda m: m.double(),
    "weight re-assigned": lambda m: setattr(m[0], "weight", nn.Parameter(m[0].weight.clone())),
    "train mode": lambda m: m.train(),
    "forward hook": lambda m: m[1].register_forward_hook(lambda *a: None),
    "forward pre-hook": lambda m: m[0].register_forward_pre_hook(lambda *a: None),
    "int attribute": lambda m: setattr(m[0], "out_features", 5),
    "float attribute": lambda m: setattr(m[1], "p", 0.2),
    "config field": lambda m: setattr(m[0].config, "scale", 2.0),
    "tensor attribute": lambda m: setattr(m[0], "cache", torch.zeros(3)),
    "tensor attribute reshaped": lambda m: setattr(m[0], "cache", m[0].cache.view(3, 1)),  # same storage
    "new attribute": lambda m: setattr(m[0], "flag", True),
    "dict in the config": lambda m: m[0].config.rope_scaling.update(factor=4.0),
    "key added to a dict": lambda m: m[0].config.rope_scaling.update(original=8),
    "list item": lambda m: m[0].head_scales.__setitem__(0, 0.5),
    "tuple in a list": lambda m: m[0].head_scales.__setitem__(1, (2, 4)),
    "list as a dict": lambda m: setattr(m[0], "head_scales", {1.0: (2, 3)}),
    # Plain values the module docstring names besides numbers and strings (an enum in a config
    # is read by value: a member is not looked into as an object there).
    "dtype attribute": lambda m: setattr(m[0], "compute_dtype", torch.bfloat16),
    "enum in the config": lambda m: setattr(m[0].config, "mode", Mode.EXACT),
}


def test_each_change_a_step_reads_changes_the_fingerprint():
    for name, change in CHANGES.items():
        model = small_model()
        before = model_fingerprint(model)
        change(model)
        assert model_fingerprint(model) != before, name


def test_no_change_keeps_it_equal():
    model = small_model()
    assert math.isnan(model[0].soft_cap)  # NaN must not make it differ from itself
    before = model_fingerprint(model)
    model(torch.zeros(1, 4))
    model[0].config.vocabulary[0] = -1  # too big a container: dynamo's guards see it, not this
    assert model_fingerprint(model) == before


def test_nested_containers_share_one_size_budget():
    # 64 lists of 64 items: each under the bound, together far over it (a per-layer table).
    model = small_model()
    model[0].table = [list(range(MAX_CONTAINER_ITEMS)) for _ in range(MAX_CONTAINER_ITEMS)]
    before = model_fingerprint(model)
    model[0].table[5][5] = -1
    assert model_fingerprint(model) == before  # not looked into: dynamo's guards see it
    model[0].table = [[1, 2], [3, 4]]
    before = model_fingerprint(model)
    model[0].table[1][1] = 5
    assert model_fingerprint(model) != before


def test_a_container_that_holds_itself_is_fingerprinted():
    model = small_model()
    model[0].head_scales.append(model[0].head_scales)
    assert model_fingerprint(model) == model_fingerprint(model)


def test_a_wrapper_subclass_weight_is_seen_through_its_inner_tensors():
    # A quantized weight (a tensor subclass) has no storage of its own: data_ptr() is 0 for
    # every one, so a re-assigned weight would look unchanged.
    model = nn.Linear(4, 4)
    model.weight = nn.Parameter(TwoTensor(torch.randn(4, 4), torch.randn(4, 4)), False)
    before = model_fingerprint(model)
    model.weight = nn.Parameter(TwoTensor(torch.randn(4, 4), torch.randn(4, 4)), False)
    assert model.weight.data_ptr() == 0
    assert model_fingerprint(model) != before


def test_weights_only_sees_the_weights_and_hooks_and_nothing_else():
    # Where no CUDA graph can exist, dynamo's guards see modes and attributes, but not hooks
    # (torch._dynamo.config.skip_nnmodule_hook_guards).
    model = small_model()
    before = model_fingerprint(model, attributes=False)
    CHANGES["train mode"](model)
    CHANGES["config field"](model)
    assert model_fingerprint(model, attributes=False) == before
    for change in ("weight re-assigned", "forward hook", "forward pre-hook"):
        model = small_model()
        before = model_fingerprint(model, attributes=False)
        CHANGES[change](model)
        assert model_fingerprint(model, attributes=False) != before, change


@pytest.mark.parametrize("attributes", [True, False])
@pytest.mark.parametrize("register", [nn.modules.module.register_module_forward_hook,
                                      nn.modules.module.register_module_forward_pre_hook])
def test_a_global_hook_added_or_removed_changes_it(register, attributes):
    model = small_model()
    before = model_fingerprint(model, attributes=attributes)
    handle = register(lambda *args: None)
    try:
        assert model_fingerprint(model, attributes=attributes) != before
    finally:
        handle.remove()
    assert model_fingerprint(model, attributes=attributes) == before


def test_a_nan_attribute_set_again_keeps_the_fingerprint_equal():
    # Tuple equality short-cuts on identity, so the same NaN object always compared equal;
    # a forward or a config loader that sets a fresh NaN (float("nan")) each call must not drop
    # the cached steps.
    model = small_model()
    before = model_fingerprint(model)
    model[0].soft_cap = float("nan")  # a new NaN object, the same value
    model[0].config.scale = float("1.0")
    assert model_fingerprint(model) == before


def test_weights_only_sees_a_reassigned_buffer():
    # The docstring promises parameters and buffers; a buffer replaced by a new tensor (a
    # rope cache rebuilt, a buffer moved on its own) must change the weights-only fingerprint.
    model = small_model()
    model[0].register_buffer("rope", torch.zeros(4))
    before = model_fingerprint(model, attributes=False)
    model[0].rope = torch.zeros(4, dtype=torch.float64)
    assert model_fingerprint(model, attributes=False) != before


def nested(depth: int, leaf) -> list:
    return [leaf] if depth == 1 else [nested(depth - 1, leaf)]


def test_container_bounds_are_inclusive():
    # Looked into: up to MAX_CONTAINER_ITEMS items, up to MAX_CONTAINER_DEPTH containers deep.
    # One more (a vocabulary, a deeper nest) is left to dynamo's guards.
    for attribute, value, change in [
            ("table", list(range(MAX_CONTAINER_ITEMS)), lambda v: v.__setitem__(-1, -1)),
            ("nest", nested(MAX_CONTAINER_DEPTH, 1), lambda v: v[0][0][0].__setitem__(0, 2))]:
        model = small_model()
        setattr(model[0], attribute, value)
        before = model_fingerprint(model)
        change(value)
        assert model_fingerprint(model) != before, attribute
    model = small_model()
    model[0].nest = nested(MAX_CONTAINER_DEPTH + 1, 1)
    before = model_fingerprint(model)
    model[0].nest[0][0][0][0][0] = 2
    assert model_fingerprint(model) == before


def test_weights_only_sees_a_buffer_reshaped_in_its_storage():
    # A view with another shape shares the data pointer, dtype and device: the shape tells it.
    model = small_model()
    model[0].register_buffer("rope", torch.zeros(4))
    before = model_fingerprint(model, attributes=False)
    model[0].rope = model[0].rope.view(2, 2)
    assert model_fingerprint(model, attributes=False) != before


@pytest.mark.parametrize("register", ["register_forward_hook", "register_forward_pre_hook"])
def test_a_hook_added_beside_another_changes_it(register):
    # Hooks are told by their handle ids: a hook dict read as a plain attribute holds functions,
    # is not looked into, and would look the same with one hook or two.
    model = small_model()
    getattr(model[0], register)(lambda *args: None)
    before = model_fingerprint(model)
    getattr(model[0], register)(lambda *args: None)
    assert model_fingerprint(model) != before


def test_weights_only_sees_a_buffer_viewed_as_another_dtype():
    # Same storage, shape and device, other dtype (a bit-cast view): the dtype tells it.
    model = small_model()
    model[0].register_buffer("rope", torch.zeros(4))
    before = model_fingerprint(model, attributes=False)
    model[0].rope = model[0].rope.view(torch.int32)
    assert model_fingerprint(model, attributes=False) != before
