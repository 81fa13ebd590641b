"""credit_compile: fast CreditDecoding for LLaDA-family diffusion LLMs.

    model = credit_compile.optimize(model)
    out = model.generate(input_ids)

Importing the package changes no compiler setting; those are applied inside the API.
"""

from .config import DecodeConfig
from .decoding.loop import FinishedBlock, GenerationOutput
from .reference import generate as generate_reference
from .text_stream import TextStream

__all__ = ["DecodeConfig", "FinishedBlock", "GenerationOutput", "TextStream", "generate_reference"]
__version__ = "0.1.0"

from .api import OptimizedModel, optimize  # noqa: E402
from .runner import CompileError  # noqa: E402

__all__ += ["CompileError", "OptimizedModel", "optimize"]
from .verify import VerifyReport, verify  # noqa: E402

__all__ += ["VerifyReport", "verify"]

# Subpackages as attributes (`credit_compile.assets.load_default_model()`, as the README writes),
# imported on first use: `models` imports transformers, which `import credit_compile` need not.
_SUBPACKAGES = ("assets", "models", "passes", "tokenizer", "training")


def __getattr__(name):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
