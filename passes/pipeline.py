"""The passes as one Inductor custom graph pass (`CustomGraphPass`, identified by `uuid()`).

The backend hands a `PassPipeline` to Inductor as `pre_grad_custom_pass` in the config patches of
its own compilation, so Inductor runs the passes on the Torch-IR graph it was given, after its own
pre-grad normalizations and before AOT autograd lowers the graph to ATen (the credit-fusion
pattern is a chain of Torch-level calls there; after lowering it would be decomposed). The
`uuid()` names the passes and their source, plus the custom ops' source files, so Inductor's
caches tell apart graphs compiled with different passes or kernels.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from .base import GraphPass


class PassPipeline(CustomGraphPass):
    """Runs `passes` in order on one graph; each pass increments its own counter."""

    def __init__(self, passes: Sequence[GraphPass]):
        self.passes = tuple(passes)

    def __call__(self, graph: torch.fx.Graph) -> None:
        module = graph.owning_module
        for graph_pass in self.passes:
            graph_pass.transform(module)
        # No generic dead-code elimination: FX treats in-place tensor methods (credit.mul_,
        # x.index_copy_) as pure and would drop the state updates. Passes erase what they replace.
        graph.lint()

    def uuid(self) -> str:
        digest = hashlib.sha256()
        for graph_pass in self.passes:
            digest.update(f"{graph_pass.name}:{graph_pass.uuid()};".encode())
        digest.update(_ops_source_digest().encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"PassPipeline({', '.join(p.name for p in self.passes)})"


@functools.cache
def _ops_source_digest(ops_dir: Path | None = None) -> str:
    """The custom ops' source files. The ops launch their Triton kernels from other modules,
    where torch's scan of an op body for kernels finds none, so Inductor's and AOTAutograd's
    caches would replay code compiled against an edited kernel; this key tells them apart."""
    if ops_dir is None:
        package = __package__.rpartition(".")[0]
        ops_dir = Path(importlib.import_module(f"{package}.ops").__file__).parent
    digest = hashlib.sha256()
    for source in sorted(ops_dir.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()
