"""`credit-compile serve` as a user runs it: in a process of its own, warm-started from a cache
directory; and the command line without the server's libraries imported."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import free_port

from credit_compile.cli import main

SERVER_LIBRARIES = ("starlette", "uvicorn", "prometheus_client", "fastapi")


def test_the_command_line_imports_no_server_library():
    code = ("import sys\nfrom credit_compile.cli import build_parser\n"
            "build_parser().parse_args(['serve', '--port', '9'])\n"
            f"loaded = [m for m in sys.modules if m.split('.')[0] in {SERVER_LIBRARIES!r}]\n"
            "assert not loaded, loaded\n"
            "assert 'credit_compile.serve.app' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-batch", "8", "--max-queue", "4"], "max_queue=4 < max_batch=8"),
    (["--tau", "2"], "tau=2"),
])
def test_bad_serve_options_fail_before_the_model_loads(argv, message, capsys):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_zero_batch_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["serve", "--max-batch", "0"])
    assert raised.value.code == 2
    assert "not a positive integer" in capsys.readouterr().err


def _start(tmp_path, run: str, cache) -> tuple[subprocess.Popen, int, object]:
    """`credit-compile serve --precompile --cache-dir cache`, as a user starts it: no
    TORCHINDUCTOR_CACHE_DIR, so the cache directory keeps Inductor's kernels too."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    log = open(tmp_path / f"{run}.log", "w+")  # noqa: SIM115 - closed by the caller
    process = subprocess.Popen(
        [sys.executable, "-m", "credit_compile", "serve", "--port", str(port), "--precompile",
         "--cache-dir", str(cache), "--max-batch", "4", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    return process, port, log


def _wait_healthy(process, port: int, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the server did not come up")


def _metrics_once_the_call_ended(port: int) -> str:
    """/metrics once the first generate() call is counted (its answer may come first)."""
    import httpx

    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if "credit_compile_generate_calls_total 1.0" in text:
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


@pytest.mark.slow
def test_a_restarted_server_answers_its_first_request_without_compiling(tmp_path):
    for library in ("starlette", "uvicorn", "prometheus_client", "openai", "httpx"):
        pytest.importorskip(library)
    import openai

    from credit_compile.assets import has_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    cache = tmp_path / "cache"
    logs, kernels = {}, {}
    for run in ("cold", "warm"):
        process, port, log = _start(tmp_path, run, cache)
        try:
            _wait_healthy(process, port, 600)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                                   timeout=120, max_retries=0)
            done = client.completions.create(model="credit-compile-default", prompt="0012+0034=")
            assert done.choices[0].text == "00046"
            metrics = _metrics_once_the_call_ended(port)
            assert "credit_compile_compiles_total 0.0" in metrics  # none on the request path
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
            log.seek(0)
            logs[run] = log.read()
            log.close()
        # uvicorn exits by the signal it handled, after its graceful shutdown (older: 0).
        assert code in (0, -signal.SIGTERM), logs[run]
        kernels[run] = {p: p.stat().st_mtime_ns for p in (cache / "inductor").rglob("*.so")}
    loaded = {run: int(re.search(r"(\d+) artifacts loaded", text)[1])
              for run, text in logs.items()}
    compiled = {run: re.search(r"Inductor: (\d+) graphs compiled, (\d+) from the cache", text)
                for run, text in logs.items()}
    assert loaded["cold"] == 0 and loaded["warm"] > 0, logs
    assert int(compiled["cold"][1]) > 0, logs["cold"]
    assert int(compiled["warm"][1]) == 0 and int(compiled["warm"][2]) > 0, logs["warm"]
    assert (cache / "compile_artifacts.bin").is_file()
    assert kernels["cold"] and kernels["warm"] == kernels["cold"]  # no kernel built again


@pytest.mark.slow
def test_two_ranks_serve_as_one_and_stop_together(tmp_path):
    """`serve --tensor-parallel 2` as torchrun starts it (its environment, one process per
    rank): rank 0 answers as the single-process server does, a streamed request its client
    leaves ends on both ranks (the next request is answered), and a SIGTERM to rank 0 ends both.
    Eager steps: the sharded compiled step is tests/test_distributed.py's."""
    for library in ("starlette", "uvicorn", "openai", "httpx"):
        pytest.importorskip(library)
    import httpx
    import openai

    from credit_compile.assets import has_default_model

    if not has_default_model():
        pytest.skip("default model files missing")
    port, master = free_port(), free_port()
    processes, logs = [], []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master))
        log = open(tmp_path / f"rank{rank}.log", "w+")  # noqa: SIM115 - closed below
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "credit_compile", "serve", "--tensor-parallel", "2",
             "--port", str(port), "--no-compile", "--max-batch", "2", "--device", "cpu",
             "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        logs.append(log)
    try:
        _wait_healthy(processes[0], port, 300)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                               timeout=120, max_retries=0)
        done = client.completions.create(model="credit-compile-default", prompt="0012+0034=")
        assert done.choices[0].text == "00046"
        body = {"model": "credit-compile-default", "prompt": "S4213=", "stream": True,
                "max_tokens": 64}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body,
                          timeout=120) as response:
            next(response.iter_lines())  # the first chunk, then the client leaves
        done = client.completions.create(model="credit-compile-default", prompt="S4213=")
        assert done.choices[0].text == "1234"
        processes[0].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        text = []
        for log in logs:
            log.seek(0)
            text.append(log.read())
            log.close()
    assert codes[0] in (0, -signal.SIGTERM) and codes[1] == 0, text


def test_the_cache_directory_keeps_the_kernels_after_inductor_set_its_default(tmp_path,
                                                                              monkeypatch):
    """Importing Inductor sets TORCHINDUCTOR_CACHE_DIR to its default folder: --cache-dir still
    takes the kernels then; a folder the user chose stands."""
    import torch._inductor.codecache  # noqa: F401 - sets the variable, as any compile does
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from credit_compile.serve.warmstart import keep_kernels_in

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    folder = keep_kernels_in(tmp_path)
    assert folder == str((tmp_path / "inductor").resolve()) and cache_dir() == folder
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert keep_kernels_in(tmp_path) is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
