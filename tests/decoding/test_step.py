"""decoding/step.py: the denoising step's block logits (classifier-free guidance) and early stop:
end-of-text settles, then fills the rest of its row."""

from __future__ import annotations

import math

import pytest
import torch
from decoding_cases import PROMPT, committed, rows, run
from toy_models import ContextMixModel, ScriptedModel

import credit_compile as cc

MASK = 3  # ScriptedModel cases: vocabulary of 4, token 3 is the mask


def test_early_stop_fills_after_a_settled_eos():
    eos = 2
    row = torch.tensor([[0.0, 0, 0, 0]] + [[0, 0, 9, 0]] * 4)  # every position: EOS, sure
    row[1] = torch.tensor([9.0, 0, 0, 0])  # first generated position: token 0
    model = ScriptedModel([row], mask_id=MASK)
    out = cc.generate_reference(model, torch.zeros(1, 1, dtype=torch.long), gen_length=4,
                                block_length=2, tau=0.99, early_stop=True, eos_token_id=eos,
                                alpha=0.0)
    assert out.generated[0].tolist() == [0, eos, eos, eos]
    assert out.nfe == 1  # one step commits both, the EOS settles, the second block is filled


def test_cfg_combines_conditional_and_unconditional_logits():
    calls = []

    class Recorder(ContextMixModel):
        def forward(self, input_ids, attention_mask=None):
            calls.append(input_ids.clone())
            return super().forward(input_ids, attention_mask)

    model = Recorder()
    ids = torch.randint(0, 30, (1, 3))
    cc.generate_reference(model, ids, strategy="llada", gen_length=4, block_length=4, steps=1,
                          cfg_scale=1.5)
    batch = calls[0]
    assert batch.shape[0] == 2
    assert (batch[1, :3] == 39).all()  # the unconditional branch sees the prompt masked
    assert torch.equal(batch[0, :3], ids[0])


EOS = 2


@pytest.mark.parametrize("strategy", ["threshold", "credit"])
def test_early_stop_waits_for_the_eos_to_settle(strategy):
    # tau = 0.9 (credit with alpha = 0 is threshold decoding).
    #   call 0: pos1 [2,0,0] 0.787, pos2 EOS [0,0,5] 0.987, pos3 [0,1.5,0] 0.691, pos4 [0,1.4,0] 0.670
    #   call 1: pos1 [5,0,0] 0.987, pos2 (committed),    pos3 [0,5,0] 0.987,   pos4 [0,1.4,0] 0.670
    # Step 1 commits the EOS at pos2 but pos1 is still masked: the EOS is not settled, nothing is
    # filled. Step 2 commits pos1 (token 0) and pos3 (token 1); now the EOS is settled and pos4,
    # still masked, is filled with EOS.
    script = [rows([2, 0, 0], [0, 0, 5], [0, 1.5, 0], [0, 1.4, 0]),
              rows([5, 0, 0], [0, 0, 5], [0, 5, 0], [0, 1.4, 0])]
    kw = dict(gen_length=4, block_length=4, tau=0.9, eos_token_id=EOS)
    if strategy == "credit":
        kw["alpha"] = 0.0
    out, model = run(strategy, script, early_stop=True, **kw)
    assert committed(out) == [[2], [1, 3]]
    assert out.generated[0].tolist() == [0, EOS, 1, EOS]
    assert out.nfe == 2 and model.calls == 2
    # Without early stop pos4 is decoded as token 1 in a third step.
    out, _ = run(strategy, script, early_stop=False, **kw)
    assert committed(out) == [[2], [1, 3], [4]]
    assert out.generated[0].tolist() == [0, EOS, 1, 1]
    assert out.nfe == 3


@pytest.mark.parametrize("strategy", ["threshold", "credit"])
def test_early_stop_fills_later_blocks(strategy):
    # Three blocks of 2. Block 0 commits token 0 and EOS in one step (both 0.99975 >= tau);
    # later blocks (which would be token 1) are filled with EOS and never decoded.
    script = [rows([9, 0, 0], [0, 0, 9], *[[0, 9, 0]] * 4)]
    out, model = run(strategy, script, gen_length=6, block_length=2, tau=0.9, eos_token_id=EOS,
                     early_stop=True)
    assert out.generated[0].tolist() == [0, EOS, EOS, EOS, EOS, EOS]
    assert out.nfe == 1 and model.calls == 1
    out, _ = run(strategy, script, gen_length=6, block_length=2, tau=0.9)
    assert out.generated[0].tolist() == [0, EOS, 1, 1, 1, 1]
    assert out.nfe == 3


@pytest.mark.parametrize("listed_in", ["config", "model_config"])
def test_early_stop_on_any_of_several_end_of_text_ids(listed_in):
    # Configs list several (end-of-text, end-of-turn): the model ends with EOS (2) while the
    # list starts with token 1, which fills the rest. Only the list's first id used to count.
    script = [rows([9, 0, 0], [0, 0, 9], *[[0, 9, 0]] * 4)]
    model = ScriptedModel(list(script), mask_id=MASK)
    kw = dict(strategy="threshold", gen_length=6, block_length=2, tau=0.9, early_stop=True)
    if listed_in == "config":
        out = cc.generate_reference(model, PROMPT, eos_token_id=[1, EOS], **kw)
    else:
        model.config.eos_token_id = [1, EOS]
        out = cc.generate_reference(model, PROMPT, **kw)
    assert out.generated[0].tolist() == [0, EOS, 1, 1, 1, 1]
    assert out.nfe == 1 and model.calls == 1


def test_early_stop_llada():
    # Blocks of 2, 2 steps each (one token per step). pos1 [8,0,0] 0.99933 < pos2 EOS [0,0,9]
    # 0.99975: step 1 commits the EOS (not settled), step 2 pos1 -> settled, the rest filled.
    script = [rows([8, 0, 0], [0, 0, 9], *[[0, 9, 0]] * 4)]
    out, model = run("llada", script, gen_length=6, block_length=2, steps=6, eos_token_id=EOS,
                     early_stop=True)
    assert committed(out) == [[2], [1]]
    assert out.generated[0].tolist() == [0, EOS, EOS, EOS, EOS, EOS]
    assert out.nfe == 2 and model.calls == 2


def test_early_stop_llada_stops_once_the_canvas_is_complete():
    # pos1 EOS [0,0,9] 0.99975 beats pos2 [8,0,0]: step 1 commits a settled EOS at pos1 and
    # everything after it is filled; nothing is left to decode.
    script = [rows([0, 0, 9], [8, 0, 0], *[[0, 9, 0]] * 2)]
    out, model = run("llada", script, gen_length=4, block_length=2, steps=4, eos_token_id=EOS,
                     early_stop=True)
    assert out.generated[0].tolist() == [EOS, EOS, EOS, EOS]
    assert out.nfe == 1 and model.calls == 1


class GuidedModel(torch.nn.Module):
    """Conditional logits `cond` when a row sees its prompt, `uncond` when its prompt is masked."""

    def __init__(self, cond: torch.Tensor, uncond: torch.Tensor, prompt_len: int):
        super().__init__()
        self.cond, self.uncond, self.prompt_len = cond, uncond, prompt_len
        self.inputs = []
        self.config = type("Cfg", (), {"mask_token_id": MASK, "vocab_size": 4})()

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        prompt_masked = (input_ids[:, :self.prompt_len] == MASK).all(-1)
        return torch.where(prompt_masked[:, None, None], self.uncond, self.cond)


def _guided():
    # cond:   pos1 [1, 0, 0],  pos2 [0.6, 1, 0]      (alone: tokens 0, 1)
    # uncond: pos1 [0, 0.5, 0], pos2 [0, 1.5, 0]
    cond = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 5], [0.6, 1, 0, 5]])
    uncond = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0.5, 0, 0], [0, 1.5, 0, 0]])
    return GuidedModel(cond, uncond, prompt_len=2)


@pytest.mark.parametrize("cfg_scale, tokens, first_conf", [
    # uncond + 2 (cond - uncond) = 2 cond - uncond: pos1 [2, -0.5, 0] (p0 = 0.8214),
    # pos2 [1.2, 0.5, 0] (p0 = 0.5562): pos1 first, and guidance flips pos2 to token 0.
    (1.0, [0, 0], math.exp(2) / (math.exp(2) + math.exp(-0.5) + 1)),
    # 3 cond - 2 uncond: pos1 [3, -1, 0] (p0 = 0.9362), pos2 [1.8, 0, 0] (p0 = 0.7515).
    (2.0, [0, 0], math.exp(3) / (math.exp(3) + math.exp(-1) + 1)),
    # No guidance: cond alone, pos1 [1,0,0] p0 = 0.5761 > pos2 [0.6,1,0] p1 = 0.4906.
    (0.0, [0, 1], math.exp(1) / (math.exp(1) + 2)),
])
def test_cfg_combination_by_hand(cfg_scale, tokens, first_conf):
    model = _guided()
    ids = torch.tensor([[0, 1]])
    out = cc.generate_reference(model, ids, strategy="llada", gen_length=2, block_length=2, steps=2,
                                cfg_scale=cfg_scale, trace=True)
    assert out.generated[0].tolist() == tokens
    assert committed(out) == [[2], [3]]
    assert out.trace[0].confidence[0] == pytest.approx([first_conf], abs=1e-5)
    assert len(model.inputs) == 2
    first = model.inputs[0]
    if cfg_scale == 0:
        assert first.shape == (1, 4)
        return
    assert first.shape == (2, 4)
    assert first[0].tolist() == [0, 1, MASK, MASK]      # conditional: the prompt
    assert first[1].tolist() == [MASK, MASK, MASK, MASK]  # unconditional: the prompt masked
    second = model.inputs[1]
    assert second[0].tolist() == [0, 1, 0, MASK]
    assert second[1].tolist() == [MASK, MASK, 0, MASK]  # the generated part is shared
