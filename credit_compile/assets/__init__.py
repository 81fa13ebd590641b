"""Files shipped inside the package: the small trained default model.

`default_model/` holds a ~1M-parameter LLaDA (d_model 128, 4 layers) trained on this project's
2-core CPU for 45 minutes with the masked-diffusion objective on synthetic tasks
(`credit_compile.training`): 4-digit fixed-width addition (``"0123+0989="`` -> ``"01112"``), digit
reversal (``"R4021="`` -> ``"1204"``), digit sorting (``"S4021="`` -> ``"0124"``) and digit
permutation (``"P40213="`` -> any ordering of the digits) of 2-12 digits, answers EOS-padded to 16
tokens and decoded in two blocks of 8. Its tokenizer is `credit_compile.tokenizer.CharTokenizer`
(``char_tokenizer.json``). See docs/quality.md.

    from credit_compile.assets import load_default_model
    model, tokenizer = load_default_model()
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

__all__ = ["DEFAULT_MODEL_DIR", "has_default_model", "load_default_model"]


def has_default_model() -> bool:
    return all((DEFAULT_MODEL_DIR / name).is_file()
               for name in ("config.json", "model.safetensors", "char_tokenizer.json"))


def load_default_model(device="cpu"):
    """(model, tokenizer): the shipped default model in eval mode on `device`, loaded offline."""
    if not has_default_model():
        raise FileNotFoundError(f"the default model files are missing from {DEFAULT_MODEL_DIR}")
    from ..models import LLaDAModelLM
    from ..tokenizer import CharTokenizer

    model = LLaDAModelLM.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    return model.to(device).eval(), CharTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
