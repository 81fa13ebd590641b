"""Load a model and its tokenizer: a checkpoint directory, or the embedded default model.

    from credit_compile.models.loading import load_model_and_tokenizer
    model, tokenizer, device = load_model_and_tokenizer("path/to/checkpoint", "cuda", "bfloat16")

What the command line and the server load. Bad input (no checkpoint, no tokenizer, a device
this machine lacks) raises ValueError naming the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

RANDOM_MODEL_NOTE = (
    "note: no model given and the embedded default model's files are missing from this "
    "installation; using a randomly initialised tiny LLaDA with a character tokenizer, so the "
    "text is noise (the decoding is real)"
)


def resolve_device(device: str | None) -> str:
    """`device`, or cuda where available, else cpu; an unusable device is a ValueError."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a device ({error}); use cpu or cuda") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} but CUDA is not available here; use cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: credit_compile runs on cpu or cuda")
    return device


def load_model_and_tokenizer(model_dir: str | None = None, device: str | None = None,
                             dtype: str | None = None, on_note=None):
    """(model, tokenizer, device): the checkpoint at `model_dir` (config.json, weights and a
    tokenizer, as save_pretrained writes them) or, without one, the embedded default model; on
    `device` (default: cuda where available), cast to `dtype` when given, so the eager reference
    and optimize() run the same weights. `on_note(text)` hears when the default model's files
    are missing and a random tiny model stands in."""
    import torch

    device = resolve_device(device)
    model, tokenizer = _load(model_dir, device, on_note)
    if dtype is not None:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16")
        model = model.to(getattr(torch, dtype))
    return model, tokenizer, device


def _model_class(config_file: Path):
    """The model a checkpoint's config.json describes: its model_type (Dream, LLaDA2, LLaDA-MoE,
    else LLaDA), or LLaDA-MoE's keys (the release's config.json says "llada")."""
    from .modeling_dream import DreamModel
    from .modeling_llada import LLaDAModelLM
    from .modeling_llada2 import LLaDA2ModelLM
    from .modeling_lladamoe import LLaDAMoEModelLM

    config = json.loads(config_file.read_text())
    if "expert_intermediate_size" in config:
        return LLaDAMoEModelLM
    return {"Dream": DreamModel, "llada2_moe": LLaDA2ModelLM,
            "lladamoe": LLaDAMoEModelLM}.get(config.get("model_type"), LLaDAModelLM)


def _load(model_dir: str | None, device: str, on_note):
    if model_dir is None:
        from ..assets import has_default_model, load_default_model

        if has_default_model():
            return load_default_model(device)
        from ..ascii_tokenizer import AsciiTokenizer
        from .presets import build_model

        if on_note is not None:
            on_note(RANDOM_MODEL_NOTE)
        return build_model("tiny", device=device, seed=0), AsciiTokenizer()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"no checkpoint at {model_dir!r}: expected a directory with config.json and "
            f"weights (as saved by save_pretrained)"
        )
    from transformers import AutoTokenizer

    from ..tokenizer import TOKENIZER_FILE, CharTokenizer

    model = _model_class(path / "config.json").from_pretrained(path).to(device).eval()
    if (path / TOKENIZER_FILE).is_file():  # this project's tokenizer (the trainer writes it)
        return model, CharTokenizer.from_pretrained(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # a checkpoint without tokenizer files
        raise ValueError(
            f"no tokenizer in {model_dir!r} ({error}); save one beside the weights with "
            f"tokenizer.save_pretrained (a transformers tokenizer, or credit_compile.tokenizer."
            f"CharTokenizer)") from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # LLaDA pads with end-of-text; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
