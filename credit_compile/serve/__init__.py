"""`credit-compile serve`: an OpenAI-compatible HTTP server over an optimized model.

Needs the `serve` extra (`pip install "credit_compile[serve]"`: Starlette, uvicorn, Prometheus'
client). Modules: `protocol` (request checks, OpenAI's answers and errors), `scheduler`
(dynamic batching in one worker thread), `app` (the routes), `warmstart` (precompile and the
compile-artifact cache), `server` (start-up), `ranks` (serving a model sharded across
torchrun's ranks), `metrics`.
"""
