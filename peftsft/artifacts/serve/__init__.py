"""`peftsft serve`: an OpenAI-compatible server for trained runs — several adapters on one base model.

HTTP (see app.py): `GET /v1/models`, `POST /v1/chat/completions` (plain, or `stream: true` as server-sent events
in OpenAI's chunk format, ending with `data: [DONE]`), `GET /health`.

In-process API, for code that embeds the models (a web UI, notebooks) without going through HTTP:

    from peftsft.artifacts.serve import Engine
    engine = Engine.load(["runs/pip", "runs/faq"], device="auto")   # one base + both adapters
    engine.model_ids                                                 # ["base", "pip", "faq"]
    done = engine.complete("pip", [{"role": "user", "content": "Who are you?"}], max_tokens=64, temperature=0)
    done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens
    for piece in engine.stream("faq", messages, temperature=0.7, top_p=0.9, stop=["\\n\\n"], seed=1):
        print(piece, end="")                                          # leaving the loop early stops generation
    async for piece in engine.astream("base", messages): ...         # inside an event loop (no thread blocked)

Options are OpenAI's: max_tokens (default: the server's --max-tokens, within the context), temperature (0 =
greedy; default 1.0), top_p, stop (a string or up to 4), seed. A bad request raises ServeError (.status,
.body() = the OpenAI error JSON). Every model id answers with its run's own chat template and stop tokens;
`base` is the base with adapters off. Generations run one at a time, in order (the adapters share the base),
from any number of threads or tasks; `Generation.cancel()` frees the slot. To serve the same engine over HTTP
as well: `ServerThread(create_app(engine, api_key=None), port=0).start().url`.
"""

from peftsft.artifacts.serve.adapters import BASE
from peftsft.artifacts.serve.app import create_app
from peftsft.artifacts.serve.engine import Completion, Engine, Generation, ServeError
from peftsft.artifacts.serve.server import ServerThread, bind, run, url_of

__all__ = ["BASE", "Completion", "Engine", "Generation", "ServeError", "ServerThread", "bind", "create_app", "run",
           "url_of"]
