"""Training the small default model: synthetic tasks (`tasks`) and the masked-diffusion
objective (`train`): ``python -m credit_compile.training.train --out DIR --minutes 15``."""

from .tasks import BLOCK_LENGTH, GEN_LENGTH, held_out_set, is_correct, make_item, sample_items

__all__ = ["BLOCK_LENGTH", "GEN_LENGTH", "held_out_set", "is_correct", "make_item", "sample_items"]
