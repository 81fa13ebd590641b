"""backend.py: the torch.compile backend. Its steps are served from Inductor's on-disk cache, and
the passes it installs fire in every step it compiles."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import assert_same_generation
from torch._dynamo.utils import counters
from toy_models import ContextMixModel, layered_model, make_prompts, token_prompts

import credit_compile as cc
from credit_compile.passes import pass_count


@pytest.mark.cheap_compile
@pytest.mark.inductor
def test_a_restarted_server_compiles_the_step_from_inductors_cache(tmp_path, monkeypatch):
    # A fresh compile of the same step in a new process (here: dynamo reset, new wrapper) is
    # served from Inductor's on-disk caches: nothing in the backend's config patches or the pass
    # pipeline may make the step uncacheable. (The passes run before the cache lookup, so the key
    # covers the rewritten graph; on torch 2.11 the pipeline's uuid() names them in it.)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # empty: the first compile misses
    model = ContextMixModel(seed=5)
    ids, mask = make_prompts(2, 5, seed=1, padded=True)
    kwargs = dict(gen_length=8, block_length=4, credit_layout="dense")
    hits = ("fxgraph_cache_hit", "autograd_cache_hit")
    outputs = []
    for _ in range(2):
        torch._dynamo.reset()
        counters.clear()
        outputs.append(cc.optimize(model, **kwargs).generate(ids, mask))
        assert pass_count("credit_fusion") == 1  # the rewrite is in the cached code too
        found = {k: counters[g][k] for g in ("inductor", "aot_autograd") for k in hits
                 if counters[g][k]}
        assert bool(found) == (len(outputs) == 2), found
    ref = cc.generate_reference(model, ids, mask, **kwargs)
    for out in outputs:
        assert_same_generation(ref, out)


# The min-versions CI stack runs the first, the Gumbel (float64 elision pass) and the
# layers-once configs; the others (`slow`) exercise no torch-version-specific path of their own.
_MAIN_STACK_ONLY = pytest.mark.slow


@pytest.mark.cheap_compile
@pytest.mark.parametrize("kv_cache, sliced_heads", [
    ("dual", 1), pytest.param("prompt", 2, marks=_MAIN_STACK_ONLY)])
def test_the_passes_fire_in_both_steps(kv_cache, sliced_heads):
    model = layered_model(2)
    heads, fusions = pass_count("block_sliced_lm_head"), pass_count("credit_fusion")
    cc.optimize(model, gen_length=8, block_length=4, kv_cache=kv_cache,
                credit_layout="dense").generate(token_prompts(1, 5)[0])
    # The refresh slices the LM head to the block. The dual cache's cached step computes the
    # block only; the prompt cache's computes the generated region, sliced to the block too.
    assert pass_count("block_sliced_lm_head") == heads + sliced_heads
    assert pass_count("credit_fusion") == fusions + 2


def test_the_cheap_backend_bindings_name_every_module_that_looks_up_the_backend():
    """Each binding replaces a `make_backend` its module calls when it compiles; a module that
    imports `make_backend` and is not listed would compile with Inductor under cheap_compile."""
    import pkgutil

    import credit_compile
    from credit_compile import backend

    bound = {module.__name__ for module, name, _ in backend.cheap_backend_bindings()
             if getattr(module, name) is backend.make_backend}
    users = set()
    for info in pkgutil.walk_packages(credit_compile.__path__, "credit_compile."):
        if info.name.startswith(("credit_compile.serve", "credit_compile.passes")):
            continue  # the server's libraries may be absent; passes build no backend
        module = importlib.import_module(info.name)
        if info.name != "credit_compile.backend" and any(
                value is backend.make_backend for value in vars(module).values()):
            users.add(info.name)
    assert users == bound
