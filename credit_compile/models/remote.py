"""Adopting the official remote-code LLaDA model (`trust_remote_code=True`, as LLaDA's model card
loads it) into this project's `LLaDAModelLM`, on the very same parameter tensors.

The official module tree (`model.transformer.{wte, blocks.{i}.*, ln_f, ff_out}`) is the one this
project's model has, so each of its parameters is set into the native module under the same
name: no copy, no extra memory. The user's module keeps working and shares the weights; what
decodes is the native model, which honours the attention mask of padded batches (the remote code
drops it), takes both KV caches and `compile_layers_once`, and traces as one graph.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .configuration_llada import LLaDAConfig
from .modeling_llada import LLaDAModelLM

log = logging.getLogger("credit_compile")

# Official config keys that are bookkeeping or runtime switches, not architecture.
_NOT_ARCHITECTURE = {"architectures", "auto_map", "transformers_version", "model_type",
                     "dtype", "torch_dtype", "_name_or_path", "use_cache", "return_dict"}


def is_remote_llada(model: nn.Module) -> bool:
    """Whether `model` is the official remote-code `LLaDAModelLM` (any released variant of that
    file: LLaDA-8B-Base/-Instruct, LLaDA-1.5; Fast-dLLM's vendored copy)."""
    return (type(model).__name__ == "LLaDAModelLM" and not isinstance(model, LLaDAModelLM)
            and isinstance(getattr(getattr(model, "model", None), "transformer", None),
                           nn.ModuleDict)
            and getattr(getattr(model, "config", None), "model_type", None) == "llada")


def adopt_remote_llada(model: nn.Module) -> LLaDAModelLM:
    """This project's LLaDAModelLM holding `model`'s own parameters (see the module docstring).

    Raises ValueError naming what does not map (a config this implementation does not
    reproduce, a parameter missing, left over or of another shape); nothing is adopted then.
    """
    what = f"the remote-code {type(model).__name__} ({type(model).__module__})"
    fields = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_ARCHITECTURE}
    try:
        config = LLaDAConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} cannot be adopted: its config does not map to credit_compile's "
                         f"LLaDA ({error}); load the checkpoint with credit_compile.models."
                         f"LLaDAModelLM.from_pretrained(path) instead, or report the variant"
                         ) from error
    with torch.device("meta"):
        native = LLaDAModelLM(config)
    source = dict(model.named_parameters(remove_duplicate=False))
    wanted = dict(native.named_parameters())
    missing = sorted(set(wanted) - set(source))
    mismatched = [f"{name} {tuple(source[name].shape)} (expected {tuple(p.shape)})"
                  for name, p in wanted.items() if name in source and source[name].shape != p.shape]
    used = {id(source[name]) for name in wanted if name in source}
    left_over = sorted(name for name, p in source.items() if id(p) not in used)
    buffers = sorted(name for name, _ in model.named_buffers())
    problems = [f"{label}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                for label, names in (("missing", missing), ("of another shape", mismatched),
                                     ("not used by credit_compile's LLaDA", left_over),
                                     ("buffers", buffers)) if names]
    if problems:
        raise ValueError(f"{what} cannot be adopted: its weights do not map to credit_compile's "
                         f"LLaDA ({'; '.join(problems)}); load the checkpoint with "
                         f"credit_compile.models.LLaDAModelLM.from_pretrained(path) instead, or "
                         f"report the variant")
    for name, parameter in source.items():
        if name in wanted:
            owner, _, leaf = name.rpartition(".")
            setattr(native.get_submodule(owner), leaf, parameter)
    native.config.dtype = next(model.parameters()).dtype
    native.train(model.training)
    log.info("credit_compile: decoding the remote-code %s with credit_compile's LLaDA on the "
             "same weights (no copy): attention masks, KV caches and compile_layers_once apply",
             type(model).__name__)
    return native
