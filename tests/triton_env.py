"""Can this environment run the Triton kernels' tests? (a probe, not a version table)

On the CPU the kernels run under Triton's interpreter. Triton 3.6's interpreter converts
`range()` bounds computed from `tl.program_id` with `int(ndarray)`, which NumPy >= 2.4 refuses
("only 0-dimensional arrays can be converted to Python scalars", triton-lang/triton#9171). The
compiled kernels on a GPU are unaffected. Probing the exact construct our kernels use tells a
broken interpreter from a broken kernel without guessing which releases carry the fix.
"""

from __future__ import annotations

import functools
import os

import torch

from credit_compile import ops


@functools.cache
def triton_kernel_problem() -> str | None:
    """None when the Triton kernels can run here, else why not and how to fix it."""
    if not ops.TRITON_AVAILABLE:
        return "needs triton (pip install triton)"
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        return None
    import numpy
    import triton
    import triton.language as tl

    @triton.jit
    def _loop_bounds_from_program_id(out_ptr, n, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), tl.float32)
        for _ in range(tl.program_id(0) * BLOCK, n, BLOCK):
            acc += 1.0
        tl.store(out_ptr + tl.arange(0, BLOCK), acc)

    out = torch.zeros(4)
    try:
        _loop_bounds_from_program_id[(1,)](out, 8, BLOCK=4)
    except Exception as error:  # the interpreter wraps whatever it hit in InterpreterError
        return (f"Triton {triton.__version__}'s interpreter fails with NumPy {numpy.__version__} "
                f"({error!r}; triton-lang/triton#9171): install 'numpy<2.4' or a Triton whose "
                "interpreter has the fix")
    if out.tolist() != [2.0] * 4:
        return f"Triton {triton.__version__}'s interpreter miscounts a loop: got {out.tolist()}"
    return None
