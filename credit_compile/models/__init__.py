"""A compile-friendly LLaDA implementation with the official checkpoint layout.

    from credit_compile.models import LLaDAModelLM, build_model
    model = LLaDAModelLM.from_pretrained("path/to/LLaDA-8B-Instruct", dtype=torch.bfloat16)
    tiny = build_model("tiny")            # random weights, seconds on CPU

LLaDA-MoE (inclusionAI's LLaDA-MoE-7B-A1B, model_type "lladamoe") has one too:

    from credit_compile.models import LLaDAMoEModelLM
    model = LLaDAMoEModelLM.from_pretrained("path/to/LLaDA-MoE-7B-A1B-Instruct", dtype=torch.bfloat16)

LLaDA2.x (inclusionAI's LLaDA2.0 / LLaDA2.1 block-diffusion MoE checkpoints, model_type
"llada2_moe") has its own native model with the official layout:

    from credit_compile.models import LLaDA2ModelLM
    model = LLaDA2ModelLM.from_pretrained("path/to/LLaDA2.0-mini", dtype=torch.bfloat16)

Dream-v0-7B (Dream-org's Base / Instruct, model_type "Dream") is transformers' Qwen2 with
bidirectional attention:

    from credit_compile.models import DreamModel
    model = DreamModel.from_pretrained("Dream-org/Dream-v0-Instruct-7B", dtype=torch.bfloat16)

Importing this package registers `LLaDAConfig` / `LLaDAModelLM` (model_type "llada") and
`LLaDA2Config` / `LLaDA2ModelLM` (model_type "llada2_moe"), `LLaDAMoEConfig` / `LLaDAMoEModelLM`
(model_type "lladamoe") and `DreamConfig` / `DreamModel` (model_type "Dream") with the
transformers Auto classes, so
`AutoConfig`, `AutoModel`, `AutoModelForMaskedLM` and `AutoModelForCausalLM` load those
checkpoint directories without `trust_remote_code`. That is a registry entry only: no compiler or
torch setting changes.
"""

from .configuration_dream import DREAM_MASK_TOKEN_ID, DreamConfig
from .configuration_llada import LLADA_MASK_TOKEN_ID, LLaDAConfig
from .configuration_llada2 import LLADA2_MASK_TOKEN_ID, LLaDA2Config
from .configuration_lladamoe import LLADAMOE_MASK_TOKEN_ID, LLaDAMoEConfig
from .modeling_dream import DreamModel
from .modeling_llada import LLaDABlock, LLaDAModel, LLaDAModelLM, positions_from_mask
from .modeling_llada2 import LLaDA2ModelLM, block_causal_mask
from .modeling_lladamoe import LLaDAMoEModelLM
from .presets import (
    DREAM_PRESETS,
    LLADA2_PRESETS,
    LLADAMOE_PRESETS,
    PRESETS,
    available_presets,
    build_model,
    get_config,
)

__all__ = [
    "LLADA_MASK_TOKEN_ID",
    "LLADA2_MASK_TOKEN_ID",
    "DREAM_MASK_TOKEN_ID",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDA2Config",
    "LLaDA2ModelLM",
    "LLADAMOE_MASK_TOKEN_ID",
    "LLaDAMoEConfig",
    "LLaDAMoEModelLM",
    "LLADAMOE_PRESETS",
    "block_causal_mask",
    "LLaDAModelLM",
    "LLaDAModel",
    "LLaDABlock",
    "PRESETS",
    "LLADA2_PRESETS",
    "DREAM_PRESETS",
    "available_presets",
    "build_model",
    "get_config",
    "positions_from_mask",
    "register_auto_classes",
]


def register_auto_classes() -> None:
    """Register model_types "llada", "llada2_moe", "lladamoe" and "Dream" with AutoConfig, AutoModel,
    AutoModelForMaskedLM and AutoModelForCausalLM (the official checkpoints' auto_map names
    AutoModel and AutoModelForCausalLM). Idempotent."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    for config_cls, model_cls in ((LLaDAConfig, LLaDAModelLM), (LLaDA2Config, LLaDA2ModelLM),
                                  (LLaDAMoEConfig, LLaDAMoEModelLM), (DreamConfig, DreamModel)):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for auto_cls in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
            auto_cls.register(config_cls, model_cls, exist_ok=True)


register_auto_classes()
