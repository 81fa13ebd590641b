"""The server under a bounded load, batched vs one request at a time, and its cold vs warm start.

    python benchmarks/bench_serve.py                    # both suites on the embedded model (CPU)
    python benchmarks/bench_serve.py --suite load --requests 128 --clients 32
    python benchmarks/bench_serve.py --suite start --plot docs/serve.png

`load`: `credit-compile serve --precompile` runs in two processes of its own at once: batched
(`--max-batch`, buckets of `--batch-bucket`) and one at a time (`--max-batch 1`). In each of
`--rounds` rounds, each in turn gets `--requests` completions from `--clients` concurrent
loopback clients (the prompts cycle through the embedded model's tasks), within `--time-limit`
seconds; each round starts after an untimed request. A row per mode: requests/s, completion tokens/s, canvas
tokens/s (rows x gen_length decoded), p50/p99 latency and the histogram of prompts per
generate() call read from the server's /metrics.

`start`: from the process's start to its first answer, four ways: cold (an empty `--cache-dir`)
and warm (the directory the cold run filled: the artifacts and Inductor's kernels), each with
`--precompile` (compiled before the port opens) and without (the first request compiles). A row
per way: start-up seconds (to /health answering), first-request seconds, compiles seen.

Rows (device, torch, commit) are appended to benchmarks/results/serve.jsonl. The clients and the
server share this machine's cores: on a small CPU the figures measure both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["0012+0034=", "R1234=", "S4213=", "0999+0001=", "R90817=", "S97531=", "1234+4321=",
           "P4213=", "R5=", "0500+0500=", "S8080=", "2345+0011="]
MODEL = "credit-compile-default"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`credit-compile serve` in a subprocess; its output kept in a log file. `env` is laid over
    this process's environment (a None value removes the variable)."""

    def __init__(self, flags: list[str], env: dict, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.log = log_path.open("w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "credit_compile", "serve", "--port", str(self.port),
             "--log-level", "warning", *flags], stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, seconds: float) -> float:
        """Seconds from the process's start to /health answering."""
        import httpx

        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not come up in {seconds} s")

    def metrics(self, seconds: float = 60.0) -> str:
        """/metrics once every generate() call begun has ended (an answer goes out when its row
        finishes, before its call has counted its figures)."""
        import httpx

        deadline = time.perf_counter() + seconds
        while True:
            text = httpx.get(self.url + "/metrics", timeout=30).text
            begun = metric(text, "credit_compile_batch_size_count")
            if metric(text, "credit_compile_generate_calls_total") >= begun or \
                    time.perf_counter() > deadline:
                return text
            time.sleep(0.05)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.log.close()
        return self.log_path.read_text()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


def batch_histogram(text: str) -> dict[str, int]:
    """generate() calls per batch-size bucket ("<=4": calls of 3 or 4 prompts, say)."""
    cumulative = [(float(le), float(v)) for le, v in re.findall(
        r'^credit_compile_batch_size_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)]
    cumulative.sort()
    out, below, bound_below = {}, 0.0, 0.0
    for le, count in cumulative:
        if count > below:
            if le == float("inf"):
                label = f">{int(bound_below)}"
            elif le - bound_below <= 1:
                label = f"{int(le)}"
            else:
                label = f"{int(bound_below) + 1}-{int(le)}"
            out[label] = int(count - below)
        below, bound_below = count, le
    return out


async def load(url: str, requests: int, clients: int, time_limit: float, max_tokens: int | None):
    """`requests` completions from `clients` concurrent clients; per request (seconds, tokens,
    ok)."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(PROMPTS[i % len(PROMPTS)])
    results = []

    async def client(http):
        while not queue.empty():
            prompt = queue.get_nowait()
            body = {"model": MODEL, "prompt": prompt}
            if max_tokens:
                body["max_tokens"] = max_tokens
            start = time.perf_counter()
            try:
                response = await http.post("/v1/completions", json=body)
                ok = response.status_code == 200
                tokens = response.json()["usage"]["completion_tokens"] if ok else 0
            except httpx.HTTPError:
                ok, tokens = False, 0
            results.append((time.perf_counter() - start, tokens, ok))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=time_limit, limits=limits) as http:
        await http.post("/v1/completions", json={"model": MODEL, "prompt": PROMPTS[0]})  # untimed
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(clients))),
                               timeout=time_limit)
        return results, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def run_load(args, base: dict, tmp: Path) -> list[dict]:
    """Both servers up at once, the load sent to each in turn for `--rounds` rounds: a machine
    whose other load changes over the run weighs on both modes alike."""
    modes = (("batched", ["--max-batch", str(args.max_batch), "--batch-bucket",
                          str(args.batch_bucket)]),
             ("one_at_a_time", ["--max-batch", "1", "--batch-bucket", "1"]))
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}  # shared: only the shapes differ
    servers = {}
    try:
        for mode, flags in modes:  # one after the other: their compiles do not overlap
            servers[mode] = Server([*flags, "--precompile", "--prompt-bucket",
                                    str(args.prompt_bucket), "--max-queue",
                                    str(max(args.requests, args.max_batch))], env,
                                   tmp / f"{mode}.log")
            servers[mode].wait_healthy(args.time_limit)
        runs = {mode: [] for mode, _ in modes}
        for _ in range(args.rounds):
            for mode, _ in modes:
                runs[mode].append(asyncio.run(load(servers[mode].url, args.requests,
                                                   args.clients, args.time_limit,
                                                   args.max_tokens)))
        metrics = {mode: server.metrics() for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for mode, _ in modes:
        results = [r for run, _ in runs[mode] for r in run]
        ok = [r for r in results if r[2]]
        latencies = [r[0] for r in ok]
        seconds = sum(s for _, s in runs[mode])
        per_round = [sum(1 for r in run if r[2]) / s for run, s in runs[mode]]
        text = metrics[mode]
        row = {**base, "suite": "load", "mode": mode,
               "max_batch": args.max_batch if mode == "batched" else 1,
               "batch_bucket": args.batch_bucket if mode == "batched" else 1,
               "prompt_bucket": args.prompt_bucket, "gen_length": 16, "block_length": 8,
               "clients": args.clients, "requests": args.requests * args.rounds,
               "rounds": args.rounds, "completed": len(ok), "errors": len(results) - len(ok),
               "seconds": seconds, "requests_per_s": len(ok) / seconds,
               "requests_per_s_rounds": per_round,
               "completion_tokens_per_s": sum(r[1] for r in ok) / seconds,
               # rows x gen_length decoded, less the untimed requests' rows
               "canvas_tokens_per_s": (metric(text, "credit_compile_generated_tokens_total")
                                       - 16 * args.rounds) / seconds,
               "p50_ms": percentile(latencies, 50) * 1e3 if ok else None,
               "p99_ms": percentile(latencies, 99) * 1e3 if ok else None,
               "generate_calls": int(metric(text, "credit_compile_batch_size_count"))
               - args.rounds,
               "batch_sizes": batch_histogram(text),
               "compiles_while_serving": int(metric(text, "credit_compile_compiles_total")),
               "loadavg_1min_after": os.getloadavg()[0]}
        rows.append(row)
        print(f"{mode:>14}: {row['requests_per_s']:7.2f} req/s  "
              f"{row['completion_tokens_per_s']:7.1f} tokens/s  p50 {row['p50_ms']:7.1f} ms  "
              f"p99 {row['p99_ms']:7.1f} ms  calls {row['generate_calls']}  "
              f"batches {row['batch_sizes']}  errors {row['errors']}  rounds "
              f"{[round(r, 1) for r in per_round]}", flush=True)
    rows[0]["speedup_requests_per_s"] = rows[0]["requests_per_s"] / rows[1]["requests_per_s"]
    return rows


def run_start(args, base: dict, tmp: Path) -> list[dict]:
    import httpx

    rows = []
    cache = tmp / "artifacts"
    for precompile in (True, False):
        cache_dir = cache / ("precompiled" if precompile else "lazy")
        for way in ("cold", "warm"):  # warm: the artifacts the cold run saved
            # No TORCHINDUCTOR_CACHE_DIR: the --cache-dir keeps Inductor's kernels, as a user's.
            env = {"TORCHINDUCTOR_CACHE_DIR": None}
            flags = ["--max-batch", "4", "--batch-bucket", "4", "--prompt-bucket", "16",
                     "--cache-dir", str(cache_dir)] + (["--precompile"] if precompile else [])
            server = Server(flags, env, tmp / f"start-{way}-{precompile}.log")
            try:
                startup = server.wait_healthy(args.time_limit)
                start = time.perf_counter()
                response = httpx.post(server.url + "/v1/completions", timeout=args.time_limit,
                                      json={"model": MODEL, "prompt": PROMPTS[0]})
                first = time.perf_counter() - start
                metrics = server.metrics()
                health = httpx.get(server.url + "/health", timeout=30).json()
            finally:
                log = server.stop()
            loaded = re.search(r"(\d+) artifacts loaded", log)
            row = {**base, "suite": "start", "mode": f"{way}{'' if precompile else '_lazy'}",
                   "precompile": precompile, "startup_s": startup, "first_request_s": first,
                   "to_first_answer_s": startup + first,
                   "answer_ok": response.status_code == 200
                   and response.json()["choices"][0]["text"] == "00046",
                   "artifacts_loaded": int(loaded[1]) if loaded else 0,
                   "compiles_on_first_request": int(metric(
                       metrics, "credit_compile_compiles_total")),
                   "compile_seconds_on_first_request": metric(
                       metrics, "credit_compile_compile_seconds_total"),
                   "inductor_graphs_compiled": health.get("inductor_graphs_compiled"),
                   "inductor_graphs_from_cache": health.get("inductor_graphs_from_cache"),
                   "loadavg_1min_after": os.getloadavg()[0],
                   "artifact_bytes": (cache_dir / "compile_artifacts.bin").stat().st_size
                   if (cache_dir / "compile_artifacts.bin").is_file() else 0}
            rows.append(row)
            print(f"{row['mode']:>10}: start-up {startup:6.1f} s  first request {first:6.2f} s "
                  f"(compiles {row['compiles_on_first_request']}, artifacts loaded "
                  f"{row['artifacts_loaded']}, Inductor graphs compiled "
                  f"{row['inductor_graphs_compiled']}, from the cache "
                  f"{row['inductor_graphs_from_cache']})", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load_rows = [r for r in rows if r["suite"] == "load"]
    start_rows = [r for r in rows if r["suite"] == "start"]
    panels = [p for p in (load_rows, start_rows) if p]
    fig, axes = plt.subplots(1, len(panels) + (1 if load_rows else 0),
                             figsize=(4.5 * (len(panels) + (1 if load_rows else 0)), 3.6))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    if load_rows:
        names = [r["mode"].replace("_", " ") for r in load_rows]
        axes[0].bar(names, [r["requests_per_s"] for r in load_rows], color=["C0", "C7"])
        axes[0].set_ylabel("requests/s")
        axes[0].set_title(f"{load_rows[0]['clients']} clients, {load_rows[0]['requests']} "
                          f"requests")
        width = 0.38
        xs = range(len(load_rows))
        axes[1].bar([x - width / 2 for x in xs], [r["p50_ms"] for r in load_rows], width,
                    label="p50")
        axes[1].bar([x + width / 2 for x in xs], [r["p99_ms"] for r in load_rows], width,
                    label="p99")
        axes[1].set_xticks(list(xs), names)
        axes[1].set_ylabel("latency (ms)")
        axes[1].legend()
    if start_rows:
        ax = axes[-1]
        names = [r["mode"].replace("_", "\n") for r in start_rows]
        ax.bar(names, [r["startup_s"] for r in start_rows], label="start-up")
        ax.bar(names, [r["first_request_s"] for r in start_rows],
               bottom=[r["startup_s"] for r in start_rows], label="first request")
        ax.set_ylabel("seconds to the first answer")
        ax.set_title("cold vs warm (--cache-dir) start")
        ax.legend()
    row = rows[0]
    fig.suptitle(f"credit-compile serve, embedded model, {row['device']}, torch {row['torch']}, "
                 f"commit {', '.join(dict.fromkeys(r['commit'] for r in rows))}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from benchutil import positive_int
    from provenance import git_commit

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["load", "start", "both"], default="both")
    parser.add_argument("--requests", type=positive_int, default=64, help="per round")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--clients", type=positive_int, default=16)
    parser.add_argument("--max-batch", type=positive_int, default=8)
    parser.add_argument("--batch-bucket", type=positive_int, default=4)
    parser.add_argument("--prompt-bucket", type=positive_int, default=16)
    parser.add_argument("--max-tokens", type=positive_int, default=None)
    parser.add_argument("--time-limit", type=float, default=600.0,
                        help="seconds a server may take to start, and the load to finish")
    parser.add_argument("--out", default=str(RESULTS / "serve.jsonl"))
    parser.add_argument("--plot", default=None, help="also draw the rows of this run to a PNG")
    args = parser.parse_args(argv)
    for library in ("starlette", "uvicorn", "httpx"):
        try:
            __import__(library)
        except ImportError:
            parser.error(f"{library} is missing: pip install -e '.[serve,test]'")
    import torch

    base = {"device": "cpu", "torch": torch.__version__, "commit": git_commit(),
            "model": "embedded"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.suite in ("load", "both"):
            rows += run_load(args, base, Path(tmp))
        if args.suite in ("start", "both"):
            rows += run_start(args, base, Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    if args.plot:
        plot(rows, Path(args.plot))
    print(f"\n{base['device']}  torch {base['torch']}  commit {base['commit']}  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
