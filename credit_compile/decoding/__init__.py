"""One generation loop (`loop`), one denoising step (`step`), pluggable strategies."""

from .loop import FinishedBlock, GenerationOutput, StepTrace, run_generation
from .state import DecodeState, prepare_state
from .step import denoise_step
from .strategies import (
    CreditStrategy,
    FactorStrategy,
    LLaDAStrategy,
    Strategy,
    ThresholdStrategy,
    make_strategy,
)

__all__ = [
    "CreditStrategy", "DecodeState", "FactorStrategy", "FinishedBlock", "GenerationOutput", "LLaDAStrategy",
    "StepTrace", "Strategy", "ThresholdStrategy", "denoise_step", "make_strategy", "prepare_state",
    "run_generation",
]
