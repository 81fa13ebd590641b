"""passes/pipeline.py and the default pass list: the passes together, as the backend runs them (the
whole denoising step of the tiny LLaDA model through the default backend with Inductor),
composed with optimum's passes, and the pipeline's Inductor cache key."""

from __future__ import annotations

import operator

import pytest
import torch
from optimum.fx.optimization import ChangeTrueDivToMulByInverse, compose
from pass_graphs import Head, assert_same_state, calls, head_inputs, run_steps
from torch._dynamo.utils import counters

from credit_compile.backend import make_backend
from credit_compile.passes import (
    BlockSlicedLMHead,
    GraphPass,
    PassPipeline,
    default_passes,
    pass_count,
)


def capture(fn, *args):
    """The Dynamo FX graph of fn(*args) (with fake tensors in node.meta) and its inputs."""
    captured = []

    def backend(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return captured[0]


def test_denoising_step_through_default_backend_with_inductor():
    ref, out = run_steps(make_backend(), credit_layout="dense")
    assert_same_state(ref, out)
    assert pass_count("credit_fusion") == 1
    assert pass_count("block_sliced_lm_head") == 1
    assert pass_count("gumbel_fp64_elision") == 0  # our step branches on temperature in Python
    assert (ref["x"] != 126).all()  # the canvas was decoded to the end


@pytest.mark.parametrize("config", [
    dict(strategy="credit", credit_layout="sparse"),
    dict(strategy="llada", cfg_scale=1.0),
    dict(strategy="llada", temperature=0.7, remasking="random"),
])
def test_default_passes_on_other_steps(config):
    ref, out = run_steps(make_backend(inductor=False), **config)
    assert_same_state(ref, out)
    assert pass_count("credit_fusion") == 0
    assert pass_count("block_sliced_lm_head") == 1


def test_composes_with_optimum_passes():
    head = Head("divided_cast")
    h, positions = head_inputs()
    gm, example_inputs = capture(head, h, positions)
    with torch.no_grad():
        ref = head(h, positions)
        composed = compose(BlockSlicedLMHead(), ChangeTrueDivToMulByInverse())
        out = composed(gm)(*example_inputs)
    assert pass_count("block_sliced_lm_head") == 1
    assert calls(gm, operator.truediv) == 0 and calls(gm, operator.mul) == 1
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)

    # optimum's pass first: the division it turned into a multiplication is still row-wise.
    torch._dynamo.reset()
    counters.clear()
    gm, example_inputs = capture(head, h, positions)
    with torch.no_grad():
        out = compose(ChangeTrueDivToMulByInverse(), BlockSlicedLMHead())(gm)(*example_inputs)
    assert pass_count("block_sliced_lm_head") == 1
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)


def test_pass_identity_and_order():
    passes = default_passes()
    assert [p.name for p in passes] == ["block_sliced_lm_head", "credit_fusion", "gumbel_fp64_elision"]
    assert all(isinstance(p, GraphPass) and p.preserves_computation for p in passes)
    uuids = [p.uuid() for p in passes]
    assert len(set(uuids)) == 3
    assert uuids == [p.uuid() for p in default_passes()]  # stable across instances


class AddToSub(GraphPass):
    """Turns every `a + b` into `a - b`: a rewrite whose effect shows in the output."""

    name = "add_to_sub"

    def rewrite(self, graph_module):
        adds = [n for n in graph_module.graph.nodes if n.target is operator.add]
        for node in adds:
            node.target = operator.sub
        return len(adds)


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy_graph_module", "eager_graph_module"])
def test_passes_only_backend_runs_the_rewritten_graph_and_counts_every_rewrite(lazy):
    # inductor=False must run the graph as the passes left it (recompiled), not the old code; with
    # TORCH_COMPILE_USE_LAZY_GRAPH_MODULE=0 Dynamo hands over a module whose code is already made.
    backend = make_backend([AddToSub()], inductor=False)
    with torch._dynamo.config.patch(use_lazy_graph_module=lazy):
        fn = torch.compile(lambda x: (x + 1) * (x + 2), backend=backend, fullgraph=True)
        x = torch.arange(4.0)
        torch.testing.assert_close(fn(x), (x - 1) * (x - 2))
    assert pass_count("add_to_sub") == 2  # the counter adds the rewrite count, not 1 per graph


def test_an_empty_pass_list_runs_no_passes():
    # passes=[] (verify's bare forward) means none, not the default passes.
    backend = make_backend([], inductor=False)
    assert backend.passes == [] and backend.pipeline.passes == ()
    assert [p.name for p in make_backend(inductor=False).passes] == [p.name for p in default_passes()]
    head = Head("module")
    h, positions = head_inputs()
    with torch.no_grad():
        out = torch.compile(head, backend=backend, fullgraph=True)(h, positions)
    torch.testing.assert_close(out, head(h, positions), atol=1e-5, rtol=0)
    assert pass_count("block_sliced_lm_head") == 0


def test_pipeline_key_changes_with_a_pass_source(monkeypatch):
    # The pipeline's key names each pass's own uuid (its source), not only the pass names.
    before = PassPipeline(default_passes()).uuid()
    monkeypatch.setattr(BlockSlicedLMHead, "uuid", lambda self: "edited")
    assert PassPipeline(default_passes()).uuid() != before


def test_pipeline_is_a_custom_graph_pass_keyed_by_its_passes():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    pipeline = PassPipeline(default_passes())
    assert isinstance(pipeline, CustomGraphPass)
    assert pipeline.uuid() == PassPipeline(default_passes()).uuid()
    reordered = PassPipeline(list(reversed(default_passes())))
    fewer = PassPipeline(default_passes()[:2])
    assert len({pipeline.uuid(), reordered.uuid(), fewer.uuid()}) == 3


def test_pipeline_key_changes_with_the_custom_ops_source(monkeypatch, tmp_path):
    # The ops launch their kernels from other modules, which Inductor's cache key cannot see:
    # an edited kernel must not replay code compiled against the old one.
    import shutil
    from pathlib import Path

    import credit_compile.ops
    from credit_compile.passes import pipeline as pipeline_module

    source = Path(credit_compile.ops.__file__).parent
    copy, changed = tmp_path / "copy", tmp_path / "changed"  # two paths: the digest is cached
    shutil.copytree(source, copy)
    shutil.copytree(source, changed)
    assert pipeline_module._ops_source_digest(copy) == pipeline_module._ops_source_digest()
    kernel = changed / "credit_step_sparse_triton.py"
    kernel.write_text(kernel.read_text() + "\n# an edited kernel\n")
    edited = pipeline_module._ops_source_digest(changed)
    assert edited != pipeline_module._ops_source_digest()

    before = PassPipeline(default_passes()).uuid()
    monkeypatch.setattr(pipeline_module, "_ops_source_digest", lambda: edited)
    assert PassPipeline(default_passes()).uuid() != before


def test_inductor_runs_the_passes_as_its_pre_grad_custom_pass():
    from torch._inductor import config as inductor_config

    seen = []

    class Probe(GraphPass):
        name = "probe"

        def rewrite(self, graph_module):
            # Called by Inductor, inside the config patches of this compilation only.
            seen.append(inductor_config.pre_grad_custom_pass)
            return 1

    backend = make_backend([Probe(), BlockSlicedLMHead()])
    before = inductor_config.pre_grad_custom_pass
    head = Head("module")
    h, positions = head_inputs()
    with torch.no_grad():
        out = torch.compile(head, backend=backend, fullgraph=True)(h, positions)
        torch.testing.assert_close(out, head(h, positions), atol=1e-5, rtol=0)
    assert seen == [backend.pipeline]
    assert pass_count("probe") == 1 and pass_count("block_sliced_lm_head") == 1
    assert inductor_config.pre_grad_custom_pass is before  # nothing left set globally


class Recorder(GraphPass):
    def __init__(self, name, seen):
        self.name, self.seen = name, seen

    def rewrite(self, graph_module):
        self.seen.append(self.name)
        return 0


def test_pipeline_runs_its_passes_in_order():
    seen = []
    gm = torch.fx.symbolic_trace(lambda x: x + 1)
    PassPipeline([Recorder("first", seen), Recorder("second", seen), Recorder("third", seen)])(gm.graph)
    assert seen == ["first", "second", "third"]
