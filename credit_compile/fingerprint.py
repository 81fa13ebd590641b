"""What a cached step depends on in the model, summarised so that a change is seen at the next call.

A compiled step guards on the model (dynamo recompiles when a guarded attribute changes), but a
captured CUDA graph checks nothing: it replays the kernels and storage it captured. So the API
compares this fingerprint with the one left by the previous call and drops its cached steps
when it differs. It covers:

- every parameter and buffer: storage, dtype, device (moved, cast or re-assigned weights would
  otherwise be replayed from freed memory);
- every module's forward hooks and pre-hooks, and the global ones (`register_module_forward_hook`):
  dynamo does not guard hooks either (`skip_nnmodule_hook_guards`), so a hook added or removed
  after the first call would be ignored by a compiled step too;
- every module's train/eval mode;
- every module's plain attributes (numbers, strings, bools, dtypes, devices, enums, tensors held
  outside parameters and buffers, and tuples, lists and dicts of these, such as a config's
  `rope_scaling`), and those of an object such as a Hugging Face config held by a module, one
  level deep.

Other objects, attributes whose containers hold more than `MAX_CONTAINER_ITEMS` items in all,
and containers nested deeper than `MAX_CONTAINER_DEPTH` are not looked into: a change inside them
is seen by the compiled step's guards, not by a graph. Where no graph can exist (a model off
CUDA), the API asks for the weights and hooks alone (`attributes=False`), which dynamo's guards do
not cover; they see the rest.

Global torch settings (autocast, TF32, attention backends) are not part of a model: the API keys
its steps on `torch_settings.torch_settings_key()` instead.
"""

from __future__ import annotations

import enum

import torch
from torch import nn

_PLAIN = (type(None), bool, int, str, torch.dtype, torch.device, enum.Enum)
_NOT_FINGERPRINTED = object()
_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)
# Bounds that keep the fingerprint cheap on attributes no forward reads item by item (a
# tokenizer's vocabulary, a label map), and finite on a container that holds itself.
MAX_CONTAINER_ITEMS = 64
MAX_CONTAINER_DEPTH = 4
# How each name in a module's __dict__ is read: nn.Module's own bookkeeping is either fingerprinted
# in its own way (weights, forward hooks) or irrelevant to forward (backward and state-dict hooks).
_WEIGHTS, _HOOKS, _SKIP, _ATTRIBUTE = range(4)
_NAME_KIND: dict[str, int] = {}


def model_fingerprint(model: nn.Module, *, attributes: bool = True) -> tuple:
    """A hashable summary of `model`: equal across calls unless something a step reads changed.

    `attributes=False` covers the weights (parameters and buffers: storage, dtype, device, shape)
    and the forward hooks only, at a fraction of the cost, for runners whose dynamo guards see
    the rest.
    """
    hooks = _global_hooks_key()
    if not attributes:
        return hooks, tuple(_weights_and_hooks_key(module) for module in model.modules())
    seen_objects: set[int] = set()
    return hooks, tuple(_module_key(module, seen_objects) for module in model.modules())


def _global_hooks_key() -> tuple:
    """Handle ids of the hooks every module runs (`nn.modules.module.register_module_forward_*`)."""
    return tuple(tuple(getattr(nn.modules.module, name, ()))
                 for name in ("_global_forward_pre_hooks", "_global_forward_hooks"))


def _weights_and_hooks_key(module: nn.Module) -> tuple:
    return (tuple(None if t is None else _tensor_key(t) for t in module._parameters.values()),
            tuple(None if t is None else _tensor_key(t) for t in module._buffers.values()),
            tuple(module._forward_hooks), tuple(module._forward_pre_hooks))


def _name_kind(name: str) -> int:
    kind = _NAME_KIND.get(name)
    if kind is None:
        if name in ("_parameters", "_buffers"):
            kind = _WEIGHTS
        elif name.startswith("_forward"):
            kind = _HOOKS
        elif name in ("_modules", "_non_persistent_buffers_set", "training") or name.startswith(
                ("_backward", "_state_dict", "_load_state_dict", "_is_full_backward_hook")):
            kind = _SKIP
        else:
            kind = _ATTRIBUTE
        _NAME_KIND[name] = kind
    return kind


def _module_key(module: nn.Module, seen_objects: set[int]) -> tuple:
    key = [module.training]
    for name, value in vars(module).items():
        kind = _name_kind(name)
        if kind == _WEIGHTS:
            key.append(tuple((n, None if t is None else _tensor_key(t)) for n, t in value.items()))
        elif kind == _HOOKS:
            key.append(tuple(value))  # handle ids: a hook added or removed changes them
        elif kind == _ATTRIBUTE:
            value_key = _value_key(value)
            if value_key is _NOT_FINGERPRINTED and _is_plain_object(value) \
                    and id(value) not in seen_objects:
                # An object held by the module (a model config): its plain fields, once per object.
                seen_objects.add(id(value))
                fields = ((k, _value_key(v)) for k, v in vars(value).items())
                value_key = tuple((k, v) for k, v in fields if v is not _NOT_FINGERPRINTED)
            if value_key is not _NOT_FINGERPRINTED:
                key.append((name, value_key))
    return tuple(key)


def _is_plain_object(value) -> bool:
    return hasattr(value, "__dict__") and not callable(value) and not isinstance(value, nn.Module)


def _value_key(value, depth: int = 0, budget: list[int] | None = None):
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, float):
        return repr(value)  # NaN compares equal to itself this way
    if isinstance(value, torch.Tensor):
        return _tensor_key(value)
    if isinstance(value, (tuple, list, dict)):
        # One budget for the whole attribute: nested containers cannot multiply the cost.
        budget = [MAX_CONTAINER_ITEMS] if budget is None else budget
        budget[0] -= len(value)
        if depth >= MAX_CONTAINER_DEPTH or budget[0] < 0:
            return _NOT_FINGERPRINTED
        if isinstance(value, dict):
            items = [(_value_key(k, depth + 1, budget), _value_key(v, depth + 1, budget))
                     for k, v in value.items()]
            keys = tuple(item for pair in items for item in pair)
        else:
            keys = tuple(_value_key(v, depth + 1, budget) for v in value)
        if any(k is _NOT_FINGERPRINTED for k in keys):
            return _NOT_FINGERPRINTED
        # The type tells a dict's interleaved keys and values from a list of the same items.
        return type(value).__name__, keys
    return _NOT_FINGERPRINTED


def _tensor_key(tensor: torch.Tensor) -> tuple:
    if type(tensor) not in _PLAIN_TENSORS and hasattr(tensor, "__tensor_flatten__"):
        # A wrapper subclass (a quantized weight) has no storage of its own: its inner tensors do.
        names, _ = tensor.__tensor_flatten__()
        return tuple(_tensor_key(getattr(tensor, name)) for name in names)
    try:
        pointer = tensor.data_ptr()
    except RuntimeError:  # no storage to point at
        pointer = id(tensor)
    return pointer, tensor.dtype, tensor.device, tuple(tensor.shape)
