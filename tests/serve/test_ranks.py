"""serve/ranks.py: rank 0's calls are made on every rank, and a host check that ends a call on
rank 0 ends it on every rank at the same step (two spawned CPU ranks on gloo, a stand-in model)."""

from __future__ import annotations

import datetime
import json
import os

from helpers import run_ranks


class Cancelled(Exception):
    pass


class StandIn:
    """generate() as the optimized model's: a host check per step, one per block; records the
    steps it made."""

    def __init__(self):
        self.steps = []

    def generate(self, ids, mask=None, *, progress=None, on_block=None, steps=3):
        made = []
        self.steps.append(made)
        for step in range(steps):
            progress(step)
            made.append(step)
        on_block(None)
        return ids


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from credit_compile.serve.ranks import Leader, follow

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    fast = StandIn()
    try:
        if rank == 0:
            leader = Leader(fast)

            def cancel_at_2(step):
                if step == 2:
                    raise Cancelled

            try:
                leader.generate(torch.zeros(1, 2), progress=cancel_at_2, on_block=None, steps=5)
            except Cancelled:
                pass
            leader.generate(torch.zeros(1, 2), progress=None, on_block=None, steps=3)
            leader.stop()
        else:
            follow(fast)
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(fast.steps, f)


def test_a_call_rank_0_ends_at_a_host_check_ends_on_every_rank(tmp_path):
    out = str(tmp_path / "steps")
    run_ranks(_rank, out, timeout=120)
    steps = [json.load(open(f"{out}.{rank}")) for rank in range(2)]
    assert steps[0] == steps[1] == [[0, 1], [0, 1, 2]]
