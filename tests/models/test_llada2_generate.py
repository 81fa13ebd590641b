"""models/llada2_generate.py: LLaDA2's official generate() rules, replayed on the native model,
give the tokens and forward counts the official code recorded (tests/fixtures/llada2_tiny.*): the
native block-causal forward over the official growing windows is what the official one computed."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from credit_compile.models import LLaDA2Config, LLaDA2ModelLM
from credit_compile.models.llada2_generate import llada2_generate

FIXTURES = Path(__file__).parents[1] / "fixtures"


@functools.cache
def official() -> tuple[torch.nn.Module, dict, dict]:
    """The tiny model whose official generate() tokens tests/fixtures/record_llada2.py recorded."""
    meta = json.loads((FIXTURES / "llada2_tiny.json").read_text())
    tensors = load_file(FIXTURES / "llada2_tiny.safetensors")
    config = LLaDA2Config(**{**meta["config"], "mask_token_id": meta["mask_token_id"],
                             "block_length": meta["block_length"]})
    model = LLaDA2ModelLM(config).eval()
    model.load_state_dict({k: v for k, v in tensors.items() if k.startswith(("model.", "lm_head."))})
    return model, meta, tensors


def official_settings(meta: dict, name: str) -> dict:
    return {k: v for k, v in meta["generate"][name].items() if k not in ("temperature",)}


@pytest.mark.parametrize("name", ["default", "two_per_step", "early_stop"])
def test_the_packaged_sampler_gives_the_official_generate_tokens(name):
    model, meta, tensors = official()
    tokens, nfe = llada2_generate(model, tensors["prompt"], **official_settings(meta, name))
    assert tokens.tolist() == tensors[f"generate_{name}"].tolist()
    assert nfe == meta["generate_nfe"][name]




def test_a_batch_is_refused():
    model, _, tensors = official()
    with pytest.raises(ValueError, match=r"decodes one prompt, \[1, length\]"):
        llada2_generate(model, tensors["prompt"].expand(2, -1), gen_length=4, block_length=4)


def test_the_mask_token_leaves_the_softmax_when_asked():
    """mask_competes=False: no proposal is the mask token, whatever the model prefers."""
    model, meta, tensors = official()
    with torch.no_grad():
        model.lm_head.weight[meta["mask_token_id"]] *= 50  # the mask token's logit dominates
    try:
        tokens, _ = llada2_generate(model, tensors["prompt"], gen_length=8, block_length=4, steps=4,
                                    mask_competes=False)
        assert meta["mask_token_id"] not in tokens.tolist()[0]
    finally:
        official.cache_clear()
