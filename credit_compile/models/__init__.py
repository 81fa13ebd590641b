"""A compile-friendly LLaDA implementation with the official checkpoint layout.

    from credit_compile.models import LLaDAModelLM, build_model
    model = LLaDAModelLM.from_pretrained("path/to/LLaDA-8B-Instruct", dtype=torch.bfloat16)
    tiny = build_model("tiny")            # random weights, seconds on CPU

Importing this package registers `LLaDAConfig` / `LLaDAModelLM` with the transformers Auto
classes (model_type "llada"), so `AutoConfig`, `AutoModel`, `AutoModelForMaskedLM` and
`AutoModelForCausalLM` load LLaDA checkpoint directories without `trust_remote_code`. That is
a registry entry only: no compiler or torch setting changes.
"""

from .configuration_llada import LLADA_MASK_TOKEN_ID, LLaDAConfig
from .modeling_llada import LLaDABlock, LLaDAModel, LLaDAModelLM, positions_from_mask
from .presets import PRESETS, available_presets, build_model, get_config

__all__ = [
    "LLADA_MASK_TOKEN_ID",
    "LLaDAConfig",
    "LLaDAModelLM",
    "LLaDAModel",
    "LLaDABlock",
    "PRESETS",
    "available_presets",
    "build_model",
    "get_config",
    "positions_from_mask",
    "register_auto_classes",
]


def register_auto_classes() -> None:
    """Register model_type "llada" with AutoConfig, AutoModel, AutoModelForMaskedLM and
    AutoModelForCausalLM (the official checkpoint's auto_map names AutoModel and
    AutoModelForCausalLM). Idempotent."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
    for auto_cls in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
        auto_cls.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


register_auto_classes()
