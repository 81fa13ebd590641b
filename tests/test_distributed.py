"""Tensor parallelism (credit_compile/distributed.py): two CPU ranks on gloo decode the tokens of
the single-process model, and bad input is refused by name.

The ranks are spawned once per test run (`tp_run`, shared by pytest-xdist's workers): each
decodes every case single-process (eager) and then sharded (compiled: one case by Inductor, the
others by the cheap backend), the shipped LLaDA and tiny LLaDA2, LLaDA-MoE, LLaDA and Dream
models (key and value heads split, and replicated where the ranks outnumber them), checks the
layouts the trained model lacks on a DeviceMesh (and the mixtures of experts' logits), runs
verify() on a sharded model, refuses prompts that differ between the ranks and runs the command
line as torchrun would (the shipped model, and a Dream checkpoint); rank 0 returns what it saw.
Spawning is bounded: a rank that fails ends every rank with its error, and a run past its
deadline is killed.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib
import io
import os
import re
import time

import pytest
import torch
import torch.multiprocessing as mp
from filelock import FileLock
from helpers import char_tokenizer_for, free_port, run_ranks

import credit_compile as cc
from credit_compile.assets import has_default_model, load_default_model
from credit_compile.distributed import shard_model

WORLD = 2
RUN_SECONDS = 600  # the whole spawned run, compiles included: 240 s on 2 cores under a load of 9
GEN = dict(gen_length=16, block_length=8)
# Every strategy with and without a cache: each case costs both ranks a decode and a compile,
# and a cache's sharded attention is the same whatever the strategy or the cache (the prompt
# cache reads and writes as the dual one does).
CASES = {
    f"{strategy}-{cache}": dict(strategy=strategy, kv_cache=cache, **extra)
    for strategy, extra, caches in (
        ("credit", {}, ("none", "dual")), ("threshold", {}, ("none", "dual")),
        ("llada", dict(steps=8, temperature=0.5, seed=3), ("none", "dual")))
    for cache in caches
}
CASES["credit-layers-once"] = dict(strategy="credit", compile_layers_once=True)
# Classifier-free guidance doubles the batch (the prompts and their unconditional twins).
CASES["llada-cfg"] = dict(strategy="llada", steps=8, cfg_scale=1.5)
PROMPTS = ["0012+0034=", "S4213=", "R98021=", "P4213="]
# The mixtures of experts and LLaDA's grouped-query attention, random tiny models with weights of
# std 0.5 (confidences far apart, so the shards' rounding never flips a decision), a padded batch
# of two: LLaDA2 (2 key/value heads, one a rank) without a cache; and with one key/value head
# (`-kv1`: replicated, each rank holding it whole) LLaDA2 with its exact block cache, LLaDA-MoE (a
# dense layer, then an MoE one with its shared expert) without a cache and LLaDA (tiny-gqa's 4
# query heads) with its dual cache; tiny Dream (random q/k/v biases too) by credit on its dual
# cache, and with one key/value head (Qwen2's attention, which repeats it for the padding mask)
# with its own sampler. The one case compiled by Inductor (the collectives' generated code) is
# tiny-gqa's credit step on one layer.
MOE_CASES = {"llada2-none": ("llada2", dict(kv_cache="none")),
             "llada2-kv1-block": ("llada2-kv1", dict(kv_cache="block")),
             "lladamoe-kv1-none": ("lladamoe-kv1", dict(kv_cache="none")),
             "llada-kv1-dual": ("llada-kv1", dict(kv_cache="dual")),
             "dream-credit-dual": ("dream", dict(strategy="credit", kv_cache="dual")),
             "dream-kv1-dream": ("dream-kv1", dict(strategy="dream")),
             "llada-layer-none": ("llada-layer", dict(kv_cache="none"))}
INDUCTOR_CASE = "llada-layer-none"
MOE_GEN = dict(gen_length=8, block_length=4)


def _moe_model(family: str, **over):
    """A random tiny model of `family` ("llada2", "lladamoe", "llada", "dream"; "-kv1": one
    key/value head; "llada-layer": one layer) with weights of std 0.5 (Dream's q/k/v biases
    too)."""
    from credit_compile.models import presets

    if family == "llada-layer":
        family, over = "llada", {"n_layers": 1, **over}
    if family.endswith("-kv1"):
        family = family.removesuffix("-kv1")
        over = {("n_kv_heads" if family == "llada" else "num_key_value_heads"): 1, **over}
    if family == "llada2":
        config = presets.get_config("tiny-llada2", initializer_range=0.5, block_length=4, **over)
    elif family == "lladamoe":
        config = presets.get_config("tiny-lladamoe", initializer_range=0.5, moe_layer_freq=[0, 1],
                                    **over)
    elif family == "dream":
        config = presets.get_config("tiny-dream", initializer_range=0.5, **over)
    else:
        config = presets.get_config("tiny-gqa", init_std=0.5, **over)
    model = presets.build_model(config, seed=1)
    model.tie_weights()  # build_model's parameters are drawn apart: tie them again where asked
    if family == "dream":  # build_model zeroes biases: a shard's must be its heads'
        draws = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.normal_(0.0, 0.5, generator=draws)
    return model


def _moe_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 125, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 125, 0  # row 0 left-padded (125: their EOS and padding)
    return ids, mask


def _init(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A collective whose peer is gone fails after this rather than waiting forever.
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))


def _decode_all(rank: int, world: int, port: int, out_path: str, names: list[str],
                inductor_case: str | None, dream_dir: str) -> None:
    import torch.distributed as dist

    from credit_compile import cli, step_cache
    from credit_compile.backend import cheap_backend_bindings
    from credit_compile.passes import pass_count

    _init(rank, world, port)
    try:
        model, tokenizer = load_default_model("cpu")
        batch = tokenizer(PROMPTS)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        single = cc.optimize(load_default_model("cpu")[0], compile=False, **GEN)
        cases = {name: CASES[name] for name in names}
        expected = {name: single.generate(ids, mask, **case) for name, case in cases.items()}
        sharded = cc.optimize(model, tensor_parallel=world, **GEN)
        inductor = step_cache.make_backend
        for module, name, value in cheap_backend_bindings():  # the step cache's and verify's
            setattr(module, name, value)
        cheap = step_cache.make_backend
        got = {name: sharded.generate(ids, mask, **case) for name, case in cases.items()}
        heads = pass_count("block_sliced_lm_head")
        # The mixtures of experts: single-process (eager) tokens, then sharded and compiled.
        moe_ids, moe_mask = _moe_prompts()
        moe_models = {family: _moe_model(family) for family, _ in MOE_CASES.values()}
        moe_single = {family: cc.optimize(copy.deepcopy(m), compile=False, **MOE_GEN)
                      for family, m in moe_models.items()}
        moe_sharded = {family: cc.optimize(m, tensor_parallel=world, **MOE_GEN)
                       for family, m in moe_models.items()}
        moe_expected, moe_got = {}, {}
        for name, (family, case) in MOE_CASES.items():
            step_cache.make_backend = inductor if name == inductor_case else cheap
            moe_expected[name] = moe_single[family].generate(moe_ids, moe_mask, **case)
            moe_got[name] = moe_sharded[family].generate(moe_ids, moe_mask, **case)
        step_cache.make_backend = cheap
        moe_heads = pass_count("block_sliced_lm_head") - heads
        llada2_layer = moe_models["llada2"].model.layers[1]
        moe_shapes = {
            "query_key_value": tuple(llada2_layer.attention.query_key_value.weight.shape),
            "expert_gate": tuple(llada2_layer.mlp.experts[0].gate_proj.weight.shape),
            "expert_down": tuple(llada2_layer.mlp.experts[0].down_proj.weight.shape),
            "shared_down": tuple(llada2_layer.mlp.shared_experts.down_proj.weight.shape),
            "router": tuple(llada2_layer.mlp.gate.weight.shape),
            "lm_head": tuple(moe_models["lladamoe-kv1"].lm_head.weight.shape),
            "query_key_value-kv1": tuple(
                moe_models["llada2-kv1"].model.layers[0].attention.query_key_value.weight.shape),
            "k_proj-kv1": tuple(moe_models["lladamoe-kv1"].model.layers[0].self_attn.k_proj
                                .weight.shape),
            "llada-k_proj-kv1": tuple(moe_models["llada-kv1"].model.transformer.blocks[0].k_proj
                                      .weight.shape),
            "kv_cache-kv1": moe_models["llada2-kv1"].kv_cache_shape(2, 16),
            "dream-qkv": tuple(tuple(getattr(moe_models["dream"].model.layers[0].self_attn,
                                             name).bias.shape) for name in ("q_proj", "k_proj",
                                                                            "v_proj")),
            "dream-kv1-k_proj": tuple(moe_models["dream-kv1"].model.layers[0].self_attn.k_proj
                                      .weight.shape),
            "dream-down": tuple(moe_models["dream"].model.layers[0].mlp.down_proj.weight.shape),
            "dream-lm_head": tuple(moe_models["dream"].lm_head.weight.shape),
            "dream-kv_cache": moe_models["dream"].kv_cache_shape(2, 16),
            "dream-kv1-kv_cache": moe_models["dream-kv1"].kv_cache_shape(2, 16),
        }
        # The layouts the trained model lacks (grouped-query attention; a tied head, biases,
        # scaled logits), sharded by a DeviceMesh: the eager forward's logits.
        from torch.distributed.device_mesh import init_device_mesh

        from credit_compile.models import presets

        mesh = init_device_mesh("cpu", (world,))
        logits_error = 0.0
        for config in (presets.get_config("tiny-gqa", init_std=0.5),
                       presets.get_config("tiny", init_std=0.5, weight_tying=True,
                                          include_bias=True, scale_logits=True),
                       presets.get_config("tiny-gqa", init_std=0.5, n_kv_heads=1,
                                          include_qkv_bias=True)):
            whole, draws = presets.build_model(config), torch.Generator().manual_seed(0)
            with torch.no_grad():  # biases, which the presets zero, are added once
                for name, parameter in whole.named_parameters():
                    if name.endswith("bias"):
                        parameter.normal_(0.0, 0.5, generator=draws)
            shards = shard_model(copy.deepcopy(whole), mesh)
            tokens = torch.randint(0, 100, (2, 12), generator=draws)
            with torch.no_grad():
                want = whole(tokens).logits
                error = (shards(tokens).logits - want).abs().max() / want.abs().max()
            logits_error = max(logits_error, float(error))
        # The mixtures of experts' eager forward, sharded: LLaDA2 also with a tied head and
        # biases on its fused query_key_value, and by the grouped formulation (CUDA's in bf16;
        # `torch._grouped_mm` runs on the CPU eagerly) on the shards' narrower expert stacks.
        from credit_compile.models.modeling_llada2 import RoutedExperts

        moe_logits_error = {}
        for label, family, over in (("llada2", "llada2", {}),
                                    ("llada2-tied-bias", "llada2",
                                     dict(tie_word_embeddings=True, use_qkv_bias=True)),
                                    ("llada2-grouped", "llada2", {}),
                                    ("lladamoe", "lladamoe", {}),
                                    ("llada2-kv1-bias", "llada2-kv1", dict(use_qkv_bias=True)),
                                    ("lladamoe-kv1-bias", "lladamoe-kv1",
                                     dict(attention_bias=True)),
                                    ("dream", "dream", {}), ("dream-kv1", "dream-kv1", {}),
                                    ("dream-tied", "dream", dict(tie_word_embeddings=True))):
            whole, draws = _moe_model(family, **over), torch.Generator().manual_seed(0)
            with torch.no_grad():
                for name, parameter in whole.named_parameters():
                    if name.endswith("bias"):
                        parameter.normal_(0.0, 0.5, generator=draws)
            for module in whole.modules():
                if isinstance(module, RoutedExperts) and label.endswith("grouped"):
                    module.formulation = "grouped"
            shards = shard_model(copy.deepcopy(whole), mesh)
            tokens = torch.randint(0, 100, (2, 12), generator=draws)
            padded = {}
            if family.startswith("dream"):  # a padding mask: Qwen2's attention repeats kv heads
                padded["attention_mask"] = torch.ones_like(tokens)
                padded["attention_mask"][0, :3] = 0
            with torch.no_grad():
                want = whole(tokens, **padded).logits
                error = (shards(tokens, **padded).logits - want).abs().max() / want.abs().max()
            moe_logits_error[label] = float(error)
        # verify() on a sharded model (LLaDA's of one key/value head, its dual-cache step
        # compiled above), the ranks' clocks running 4 and 40 times as fast (timing fewer calls):
        # rank 1's timing loop would stop calling before rank 0's (and their collectives would
        # mismatch) if the ranks did not agree on each call.
        verify_module = importlib.import_module("credit_compile.verify")
        verify_module.time = _FastClock(4 if rank == 0 else 40)
        report = cc.verify(moe_sharded["llada-kv1"], moe_ids, moe_mask, timed_calls=2,
                           **MOE_CASES["llada-kv1-dual"][1])
        verify_module.time = time
        verified = [None] * world
        dist.all_gather_object(verified, (report.ok, report.tokens_equal,
                                          report.reference_calls, report.optimized_calls,
                                          report.max_logit_difference))
        # Ranks given different prompts of one shape: refused on every rank, not decoded.
        try:
            sharded.generate(tokenizer(["0012+0034=" if rank == 0 else "0012+0035="])["input_ids"])
            mismatch = "decoded"
        except ValueError as error:
            mismatch = str(error)
        # The command line as torchrun starts it: its environment, the group already there.
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(["generate", "--tensor-parallel", str(world), "--prompt",
                             "0012+0034=", "--prompt", "S4213="])
        dream_printed = io.StringIO()  # a Dream checkpoint and its own sampler
        with contextlib.redirect_stdout(dream_printed):
            dream_code = cli.main(["generate", "--tensor-parallel", str(world), "--model",
                                   dream_dir, *DREAM_CLI])
        dist.barrier()
        if rank == 0:
            torch.save({
                "expected": {k: (v.sequences, v.nfe) for k, v in expected.items()},
                "got": {k: (v.sequences, v.nfe) for k, v in got.items()},
                "heads_sliced": heads,
                "mismatch": mismatch,
                "mesh_logits_error": float(logits_error),
                "cli": (code, printed.getvalue()),
                "dream_cli": (dream_code, dream_printed.getvalue()),
                "q_proj": tuple(model.model.transformer.blocks[0].q_proj.weight.shape),
                "moe_expected": {k: (v.sequences, v.nfe) for k, v in moe_expected.items()},
                "moe_got": {k: (v.sequences, v.nfe, v.stats.get("runner"))
                            for k, v in moe_got.items()},
                "moe_heads_sliced": moe_heads,
                "moe_shapes": moe_shapes,
                "moe_logits_error": moe_logits_error,
                "verify": verified,
            }, out_path)
    finally:
        dist.destroy_process_group()


class _FastClock:
    """`time` as verify.py reads it, its `perf_counter` running `factor` times as fast."""

    def __init__(self, factor: float):
        self.factor = factor

    def __getattr__(self, name):
        return getattr(time, name)

    def perf_counter(self) -> float:
        return time.perf_counter() * self.factor


def _fail_on_one_rank(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    _init(rank, world, port)
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    dist.barrier()  # waits for rank 1, which never comes


@pytest.fixture(scope="session")
def tp_run(tmp_path_factory, request):
    """The ranks' results, spawned once per test run: under pytest-xdist the workers share one
    spawn through a file lock in their common temporary folder (the first to ask spawns, the
    others wait and read; a failed spawn is reported to each, not repeated)."""
    if not has_default_model():
        pytest.skip("default model files missing")
    worker = getattr(request.config, "workerinput", None)
    shared = tmp_path_factory.getbasetemp()
    if worker is not None:  # each xdist worker's base is a folder of the run's common one
        shared = shared.parent
    path, failed = shared / "tp_results.pt", shared / "tp_failed.txt"
    dream_dir = shared / "tp_dream"
    with FileLock(str(shared / "tp.lock")):
        if failed.is_file():
            pytest.fail(f"the spawned ranks failed in another worker:\n{failed.read_text()}")
        if not path.is_file():
            try:
                _save_dream_checkpoint(dream_dir)
                run_ranks(_decode_all, str(path), list(CASES), INDUCTOR_CASE, str(dream_dir),
                          world=WORLD, timeout=RUN_SECONDS)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}")
                raise
    return {**torch.load(path), "dream_dir": dream_dir}


# `generate --model` on a Dream checkpoint (tiny-dream's sizes, a character tokenizer that
# prints every answer token), decoded by Dream's own sampler.
DREAM_PROMPTS = ["12+34=", "R321="]
DREAM_DECODE = dict(strategy="dream", steps=8, gen_length=8, block_length=8)
DREAM_CLI = [*(arg for prompt in DREAM_PROMPTS for arg in ("--prompt", prompt)),
             *(arg for name, value in DREAM_DECODE.items()
               for arg in (f"--{name.replace('_', '-')}", str(value)))]


def _save_dream_checkpoint(path) -> None:
    model = _moe_model("dream")
    model.save_pretrained(path)
    char_tokenizer_for(model.config).save_pretrained(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_decode_the_single_process_tokens(tp_run, case):
    sequences, nfe = tp_run["got"][case]
    want_sequences, want_nfe = tp_run["expected"][case]
    assert torch.equal(sequences, want_sequences), (case, sequences, want_sequences)
    assert nfe == want_nfe


@pytest.mark.slow
def test_each_rank_holds_its_shard_and_the_block_is_sliced_before_the_gather(tp_run):
    assert tp_run["q_proj"] == (128 // WORLD, 128)  # the shipped model: d_model 128, 4 heads
    # Each compiled step function ran the block-sliced LM head pass through the gather.
    assert tp_run["heads_sliced"] >= len(CASES)


@pytest.mark.slow
def test_grouped_query_attention_and_a_tied_head_shard_by_a_device_mesh(tp_run):
    assert tp_run["mesh_logits_error"] < 1e-5  # relative: float rounding of the summed shards


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MOE_CASES))
def test_two_ranks_decode_the_mixtures_of_experts_single_process_tokens(tp_run, case):
    sequences, nfe, runner = tp_run["moe_got"][case]
    want_sequences, want_nfe = tp_run["moe_expected"][case]
    assert runner == "compiled"  # one fullgraph step, the collectives in it
    assert torch.equal(sequences, want_sequences), (case, sequences, want_sequences)
    assert nfe == want_nfe


@pytest.mark.slow
def test_the_mixtures_of_experts_shard_heads_experts_and_head(tp_run):
    # tiny-llada2: 4 query and 2 key/value heads of 8, hidden 32, experts and shared expert of
    # width 16, 8 experts; tiny-lladamoe: a vocabulary of 128.
    assert tp_run["moe_shapes"] == {
        "query_key_value": ((4 + 2 * 2) * 8 // WORLD, 32), "expert_gate": (16 // WORLD, 32),
        "expert_down": (32, 16 // WORLD), "shared_down": (32, 16 // WORLD), "router": (8, 32),
        "lm_head": (128 // WORLD, 32),
        # One key/value head: each rank keeps it whole (LLaDA2: its query heads' rows, then the
        # key head's and the value head's), and its KV cache holds it.
        "query_key_value-kv1": ((4 // WORLD + 2) * 8, 32), "k_proj-kv1": (8, 32),
        "llada-k_proj-kv1": (8, 32), "kv_cache-kv1": (2, 2, 1, 16, 8),
        # tiny-dream: 4 query and 2 key/value heads of 8, MLP width 64, a vocabulary of 128; with
        # one key/value head each rank keeps it whole.
        "dream-qkv": ((4 * 8 // WORLD,), (2 * 8 // WORLD,), (2 * 8 // WORLD,)),
        "dream-kv1-k_proj": (8, 32), "dream-down": (32, 64 // WORLD),
        "dream-lm_head": (128 // WORLD, 32), "dream-kv_cache": (2, 2, 2 // WORLD, 16, 8),
        "dream-kv1-kv_cache": (2, 2, 1, 16, 8)}
    assert tp_run["moe_heads_sliced"] >= len(MOE_CASES)  # the head sliced through the gather
    for label, error in tp_run["moe_logits_error"].items():
        assert error < 1e-5, (label, error)  # relative: float rounding of the summed shards


@pytest.mark.slow
def test_verify_reports_equal_tokens_on_a_sharded_model_every_rank_calling_alike(tp_run):
    reports = tp_run["verify"]
    for ok, tokens_equal, _, _, logit_difference in reports:
        assert ok and tokens_equal
        assert logit_difference < 1e-4
    # The same number of calls on both ranks, though their clocks differ.
    assert len({(reference, optimized) for _, _, reference, optimized, _ in reports}) == 1, reports


@pytest.mark.slow
def test_ranks_given_different_prompts_are_refused(tp_run):
    assert "every rank must call generate()" in tp_run["mismatch"]


@pytest.mark.slow
def test_the_command_line_decodes_under_torchrun(tp_run):
    code, printed = tp_run["cli"]
    assert code == 0
    assert "'0012+0034=' -> '00046'" in printed and "'S4213=' -> '1234'" in printed


@pytest.mark.slow
def test_the_command_line_decodes_a_dream_checkpoint_under_torchrun(tp_run):
    """The sharded Dream answers the single-process model's text (its eager reference)."""
    from credit_compile.models.loading import load_model_and_tokenizer

    code, printed = tp_run["dream_cli"]
    assert code == 0, printed
    model, tokenizer, _ = load_model_and_tokenizer(str(tp_run["dream_dir"]), "cpu")
    batch = tokenizer(DREAM_PROMPTS)
    want = cc.generate_reference(model, batch["input_ids"], batch["attention_mask"], **DREAM_DECODE)
    for prompt, row in zip(DREAM_PROMPTS, want.generated, strict=True):
        text = tokenizer.decode(row, skip_special_tokens=True)
        assert text and f"{prompt!r} -> {text!r}" in printed


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_with_its_error():
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 failed on purpose"):
        run_ranks(_fail_on_one_rank, world=WORLD, timeout=60)
    assert time.monotonic() - start < 60


# --- bad input, in this process ------------------------------------------------------------


def test_tensor_parallel_without_a_process_group_names_torchrun():
    from credit_compile.models import presets

    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node N"):
        cc.optimize(presets.build_model("tiny"), tensor_parallel=2)


@pytest.fixture
def one_rank_group():
    """A gloo group of this process alone (world size 1)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("preset, over, dimension", [
    ("tiny", dict(n_heads=3, n_kv_heads=3, d_model=24), "n_heads = 3"),
    # 3 key/value heads, 2 ranks: neither divides the other.
    ("tiny", dict(n_heads=6, n_kv_heads=3, d_model=24), "n_kv_heads = 3 and is not a multiple"),
    ("tiny", dict(mlp_hidden_size=63), "the MLP width (mlp_hidden_size) = 63"),
    ("tiny", dict(vocab_size=127, embedding_size=127, mask_token_id=126),
     "the vocabulary (embedding_size) = 127"),
    ("tiny-llada2", dict(num_attention_heads=3, num_key_value_heads=1), "num_attention_heads = 3"),
    ("tiny-llada2", dict(num_attention_heads=6, num_key_value_heads=3),
     "num_key_value_heads = 3 and is not a multiple"),
    ("tiny-llada2", dict(intermediate_size=63),
     "the dense layers' MLP width (intermediate_size) = 63"),
    ("tiny-llada2", dict(moe_intermediate_size=15), "each expert's width (moe_intermediate_size) = 15"),
    ("tiny-llada2", dict(vocab_size=127), "the vocabulary (vocab_size) = 127"),
    ("tiny-lladamoe", dict(num_attention_heads=6, num_key_value_heads=3, hidden_size=24),
     "num_key_value_heads = 3 and is not a multiple"),
    ("tiny-lladamoe", dict(dense_intermediate_size=63, moe_layer_freq=[0, 1]),
     "the dense layers' MLP width (dense_intermediate_size) = 63"),
    ("tiny-lladamoe", dict(expert_intermediate_size=15),
     "each expert's width (expert_intermediate_size) = 15"),
    ("tiny-lladamoe", dict(shared_expert_intermediate_size=15),
     "the shared expert's width (shared_expert_intermediate_size) = 15"),
    ("tiny-dream", dict(num_attention_heads=3, num_key_value_heads=1, hidden_size=24),
     "num_attention_heads = 3"),
    ("tiny-dream", dict(num_attention_heads=6, num_key_value_heads=3, hidden_size=24),
     "num_key_value_heads = 3 and is not a multiple"),
    ("tiny-dream", dict(intermediate_size=63), "the MLP width (intermediate_size) = 63"),
    ("tiny-dream", dict(vocab_size=127, mask_token_id=126, eos_token_id=125, pad_token_id=125),
     "the vocabulary (vocab_size) = 127"),
])
def test_a_world_size_that_does_not_divide_a_dimension_is_refused_by_name(preset, over, dimension,
                                                                          monkeypatch,
                                                                          one_rank_group):
    import torch.distributed as dist

    from credit_compile.models import presets

    model = presets.build_model(presets.get_config(preset, **over))
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(ValueError, match=re.escape(f"does not divide {dimension}")):
        shard_model(model, 2)


def test_more_ranks_than_key_value_heads_and_not_a_multiple_are_refused_naming_the_sizes(
        monkeypatch, one_rank_group):
    import torch.distributed as dist

    from credit_compile.models import presets

    # 12 query heads, 3 key/value heads: 4 ranks exceed the key/value heads but 3 does not
    # divide 4; 6 and 12 ranks would replicate them, 3 and 1 divide them.
    model = presets.build_model(presets.get_config("tiny", n_heads=12, n_kv_heads=3, d_model=48,
                                                   mlp_hidden_size=96, vocab_size=192,
                                                   embedding_size=192))
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    with pytest.raises(ValueError, match=re.escape(
            "tensor_parallel=4 does not divide n_kv_heads = 3 and is not a multiple of it: "
            "choose a number of ranks that divides 3 or a multiple of 3, which replicates the "
            "key and value heads (world sizes this model allows: 1, 3, 6, 12)")):
        shard_model(model, 4)


@pytest.mark.parametrize("n_kv, size, holds", [
    (4, 8, [0, 0, 1, 1, 2, 2, 3, 3]),  # LLaDA2-mini/flash at 8 ranks: two ranks a head
    (2, 8, [0, 0, 0, 0, 1, 1, 1, 1]),
    (1, 4, [0, 0, 0, 0]),
    (4, 4, [0, 1, 2, 3]),
    (8, 4, [(0, 1), (2, 3), (4, 5), (6, 7)]),  # divided: consecutive heads
    (4, 1, [(0, 1, 2, 3)]),
])
def test_each_rank_holds_the_key_value_heads_its_query_heads_read(n_kv, size, holds):
    from credit_compile.distributed import kv_heads

    layout = kv_heads(n_kv, size)
    assert [tuple(heads) for heads in layout] == [
        (h,) if isinstance(h, int) else h for h in holds]
    # Whatever the query heads (a multiple of both), rank r's are r * q / N onwards, and query
    # head i reads key/value head i // (q / n_kv): every one of them is among the rank's.
    for n_q in (size * n_kv, 2 * size * n_kv):
        for rank, heads in enumerate(layout):
            per_rank = n_q // size
            for i in range(rank * per_rank, (rank + 1) * per_rank):
                assert i // (n_q // n_kv) in heads, (n_q, rank, i)
    with pytest.raises(ValueError, match="neither divide 3 key and value heads"):
        kv_heads(3, 4)


@pytest.mark.parametrize("preset, over", [
    ("tiny", dict(n_heads=8, n_kv_heads=4, include_qkv_bias=True)),
    ("tiny-llada2", dict(num_attention_heads=8, num_key_value_heads=4, use_qkv_bias=True)),
    ("tiny-lladamoe", dict(num_attention_heads=8, num_key_value_heads=4, attention_bias=True)),
    ("tiny-dream", dict(num_attention_heads=8, num_key_value_heads=4)),  # biases on q/k/v
])
def test_eight_ranks_shard_four_key_value_heads_two_ranks_a_head(preset, over, monkeypatch,
                                                                 one_rank_group):
    """Each of 8 ranks (the group's size and this process's rank faked, no forward run) keeps the
    rows and biases of key/value head rank // 2 of the whole model's, and its KV cache one head."""
    import torch.distributed as dist

    from credit_compile.models import presets

    def kv_rows(model) -> list[torch.Tensor]:
        """The first layer's key heads and value heads: `[heads, head_dim, d + 1]`, each head's
        rows of the projection's weights beside their biases."""
        if preset == "tiny":
            block = model.model.transformer.blocks[0]
            k, v, head_dim = block.k_proj, block.v_proj, block.head_dim
        elif preset in ("tiny-lladamoe", "tiny-dream"):
            attention = model.model.layers[0].self_attn
            k, v, head_dim = attention.k_proj, attention.v_proj, attention.head_dim
        else:  # LLaDA2's fused projection: its query heads' rows, its key heads', its value's
            attention = model.model.layers[0].attention
            qkv, head_dim = attention.query_key_value, attention.head_dim
            rows = torch.cat([qkv.weight, qkv.bias[:, None]], 1).detach()
            _, keys, values = rows.split([attention.num_heads * head_dim,
                                          attention.num_kv_heads * head_dim,
                                          attention.num_kv_heads * head_dim])
            return [t.reshape(-1, head_dim, t.shape[1]) for t in (keys, values)]
        return [torch.cat([p.weight, p.bias[:, None]], 1).detach().reshape(-1, head_dim, 33)
                for p in (k, v)]

    whole = presets.build_model(presets.get_config(preset, **over))
    with torch.no_grad():
        for name, parameter in whole.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    heads = kv_rows(whole)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 8)
    for rank in range(8):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, rank=rank: rank)
        shard = shard_model(copy.deepcopy(whole), 8)
        for got, want in zip(kv_rows(shard), heads, strict=True):
            assert torch.equal(got, want[rank // 2:rank // 2 + 1]), rank
        assert shard.kv_cache_shape(3, 5)[2] == 1


def test_a_rank_count_other_than_the_group_size_is_refused(one_rank_group):
    from credit_compile.models import presets

    with pytest.raises(ValueError, match="nproc-per-node 2"):
        shard_model(presets.build_model("tiny"), 2)


def test_other_models_are_refused_by_name(one_rank_group):
    from toy_models import ContextMixModel

    with pytest.raises(ValueError, match="own LLaDA, LLaDA-MoE, LLaDA2 and Dream models"):
        shard_model(ContextMixModel(), 1)


def test_shards_off_the_gpu_under_nccl_are_refused_naming_the_move(one_rank_group, monkeypatch):
    import torch.distributed as dist

    from credit_compile.models import presets

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match=re.escape("move the model to this rank's GPU first")):
        cc.optimize(presets.build_model("tiny"), tensor_parallel=1)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llada2", "tiny-dream"])
def test_a_shard_refuses_to_pickle_naming_what_to_save(preset):
    import pickle

    from credit_compile.distributed import tensor_parallel_class
    from credit_compile.models import presets

    model = presets.build_model(preset)
    model.__class__ = tensor_parallel_class(type(model))  # a shard's class, without the group
    for save in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match="save or copy the whole model before sharding"):
            save(model)
