"""Train the small default LLaDA on the synthetic tasks with the masked-diffusion objective.

    python -m credit_compile.training.train --out DIR --minutes 15      # time-budgeted
    python -m credit_compile.training.train --out DIR --steps 3000      # fixed step count

Objective (LLaDA SFT): per sequence t ~ U(eps, 1); every answer token (the EOS padding included)
is replaced by [MASK] independently with probability t; the prompt is never masked; the loss is
the cross-entropy on the masked positions weighted 1/t, summed and divided by the number of
answer tokens. AdamW, linear warm-up then cosine decay, fixed seeds.

Reproducibility: with `--steps` the run is a pure function of the arguments (CPU, same torch):
the data stream and masks come from fixed seeds, the cosine schedule runs over the step count.
`--minutes` stops at the time budget and runs the cosine schedule over elapsed time, so it is
robust to a loaded machine but not bit-reproducible (the data order still is; the steps done are
written to training_log.json).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models import LLaDAConfig, LLaDAModelLM
from ..models.presets import PRESETS
from ..tokenizer import CharTokenizer
from .tasks import GEN_LENGTH, MAX_PROMPT, encode_batch, sample_items


def default_config(tokenizer: CharTokenizer) -> LLaDAConfig:
    base = dict(PRESETS["tiny"])
    base.update(
        d_model=128, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=512, mlp_ratio=4,
        vocab_size=tokenizer.vocab_size, embedding_size=tokenizer.vocab_size,
        max_sequence_length=64, mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LLaDAConfig(**base)


def diffusion_loss(model, ids, mask, prompt_width, mask_id, generator, eps: float = 1e-3):
    """The masked-diffusion loss of one batch (answer positions only)."""
    b, length = ids.shape
    t = eps + (1 - eps) * torch.rand(b, 1, generator=generator)
    answer = torch.zeros(b, length, dtype=torch.bool)
    answer[:, prompt_width:] = True
    masked = (torch.rand(b, length, generator=generator) < t) & answer
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, attention_mask=mask).logits
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    weights = (1.0 / t).expand(b, length)[masked]
    return (ce * weights).sum() / (b * (length - prompt_width))


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `peak` to `peak / 10` over
    `progress` in [0, 1] (fraction of the steps, or of the time budget)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, max(0.0, progress))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save(model, tokenizer, out: Path, log: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")


def train(out: str, steps: int | None = None, minutes: float | None = None, batch_size: int = 128,
          lr: float = 1e-3, warmup: int = 200, weight_decay: float = 0.01, seed: int = 0,
          threads: int = 2, log_every: int = 100, save_every: int = 500,
          init: str | None = None) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = CharTokenizer()
    config = default_config(tokenizer)
    # `init` continues from a saved checkpoint (weights only; a fresh optimizer and schedule).
    model = LLaDAModelLM(config) if init is None else LLaDAModelLM.from_pretrained(init)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    out_dir = Path(out)
    budget = None if minutes is None else minutes * 60.0
    log = {"seed": seed, "batch_size": batch_size, "lr": lr, "warmup": warmup,
           "weight_decay": weight_decay, "gen_length": GEN_LENGTH, "max_prompt": MAX_PROMPT,
           "threads": threads, "minutes": minutes, "init": init, "losses": []}
    start = time.perf_counter()
    running, count = 0.0, 0
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        if steps is not None:
            if step >= steps:
                break
            progress = step / steps
        else:
            if elapsed >= budget:
                break
            progress = elapsed / budget
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, lr, warmup)
        items = sample_items(batch_size, rng)
        ids, mask, width = encode_batch(items, tokenizer)
        loss = diffusion_loss(model, ids, mask, width, config.mask_token_id, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        count += 1
        step += 1
        if step % log_every == 0:
            elapsed = time.perf_counter() - start
            log["losses"].append([step, running / count])
            lr = opt.param_groups[0]["lr"]
            print(f"step {step} lr {lr:.2e} loss {running / count:.4f} {elapsed:.0f}s", flush=True)
            running, count = 0.0, 0
        if step % save_every == 0:
            log.update(steps=step, seconds=time.perf_counter() - start)
            model.eval()
            save(model, tokenizer, out_dir, log)
            model.train()
    model.eval()
    log.update(steps=step, seconds=time.perf_counter() - start)
    save(model, tokenizer, out_dir, log)
    return log


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init", default=None, help="continue from this checkpoint directory")
    args = p.parse_args(argv)
    if (args.steps is None) == (args.minutes is None):
        p.error("give exactly one of --steps or --minutes")
    log = train(args.out, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                lr=args.lr, warmup=args.warmup, seed=args.seed, threads=args.threads,
                init=args.init)
    print(f"done: {log['steps']} steps in {log['seconds']:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
