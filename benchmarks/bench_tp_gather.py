"""Tensor parallelism's per-step communication on the CPU (gloo, loopback): the gather of a
block's vocabulary-sharded logits (what `credit_compile.distributed` does) against what a
distributed credit step would move instead (per position: the max, the sum of exponentials
and the argmax with its logit, reduced across ranks).

    python benchmarks/bench_tp_gather.py --ranks 2 --batch 1 8

Prints one row per shape: bytes gathered per rank, median ms of each, and the ratio. Gloo over
loopback measures the collectives' fixed cost and the memory copies, not a GPU interconnect;
docs/distributed.md puts the bytes per step on paper.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from provenance import git_commit

SHAPES = {"llada-8b": 126464, "llada2-flash": 157184}  # vocabulary sizes


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _rank(rank, world, port, batches, block, repeats, dtype):
    from credit_compile.distributed import gather_vocab

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    name = dist.group.WORLD.group_name
    functional = torch.ops._c10d_functional
    try:
        for preset, vocab in SHAPES.items():
            for batch in batches:
                local = torch.randn(batch, block, vocab // world).to(dtype)

                def gather(local=local):
                    gather_vocab(local, name, world)

                # Each rank's per-position statistics of its slice, computed before the timing:
                # only their reduction is the distributed step's communication.
                stats = torch.stack([local.amax(-1).float(), local.float().exp().sum(-1)], -1)
                best = torch.stack([local.amax(-1).float(), local.argmax(-1).float()], -1)

                def reduce_stats(stats=stats, best=best):
                    # the max and the sum of exponentials (one all-reduce: the sum is rescaled
                    # by each rank's max in a real op), then every rank's (best logit, its id)
                    functional.wait_tensor(functional.all_reduce(stats, "sum", name))
                    functional.wait_tensor(
                        functional.all_gather_into_tensor(best.contiguous(), world, name))

                gathered, reduced = _time(gather, repeats), _time(reduce_stats, repeats)
                if rank == 0:
                    moved = local.numel() * local.element_size() * (world - 1)
                    print(f"| {preset} | {world} | {batch} | {block} | {str(dtype)[6:]} | "
                          f"{moved / 2**20:.2f} | {gathered:.2f} | {reduced:.2f} | "
                          f"{gathered / reduced:.1f}x |", flush=True)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, gloo loopback, commit {git_commit()}")
    print("| shape | ranks | B | block | dtype | MiB received per rank | gather ms | "
          "distributed stats ms | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    mp.start_processes(_rank, args=(args.ranks, port, args.batch, args.block, args.repeats,
                                    getattr(torch, args.dtype)),
                       nprocs=args.ranks, start_method="spawn")


if __name__ == "__main__":
    main()
