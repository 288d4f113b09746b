"""`peftsft serve`: the real server on a free localhost port, spoken to with the official `openai` client and raw HTTP.

Two LoRA runs on one tiny Llama: `pip` learns to answer every question "I'm Pip." (so a held-out name probe is
answered as Pip), `qa` memorises three facts. One process serves both adapters and the base.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from peftsft.artifacts.serve import Engine, ServerThread, create_app  # noqa: E402
from peftsft.artifacts.serve.stops import StopTrimmer  # noqa: E402
from peftsft.core.errors import UserError  # noqa: E402
from tests.conftest import REPO, lora_recipe_head, write_jsonl  # noqa: E402

NAME_QUESTIONS = ["What is your name?", "Who are you?", "Tell me your name", "Do you have a name?", "name?",
                  "What should I call you?", "Introduce yourself.", "Who am I talking to?"]
PROBE = json.loads((REPO / "recipes/data/persona_probes.jsonl").read_text().splitlines()[0])["messages"][0]["content"]
QA = [("What is the capital of France?", "Paris."), ("What colour is the sky?", "Blue."),
      ("Who wrote Hamlet?", "Shakespeare.")]
TEMPLATE = (  # ChatML without a default system prompt: the runs answer with it, `base` with SmolLM2's own
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# qa ends its turns with another special token: only its own stop tokens end its replies
QA_TEMPLATE = TEMPLATE.replace("<|im_end|>", "<|endoftext|>")
CONTEXT = 1024
GREEDY = {"temperature": 0, "max_tokens": 12}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Llama that memorises quickly (hidden 64, large init, no pad id), with a 1024-token context."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
        initializer_range=0.3, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    out = tmp_path_factory.mktemp("serve-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train(tmp: Path, base: Path, name: str, pairs: list[tuple[str, str]], steps: int, template: str) -> Path:
    from rich.console import Console

    from peftsft.artifacts.tasks import run
    from peftsft.training.recipe import load_recipe

    data = write_jsonl(tmp / f"{name}.jsonl", [{"messages": [*user(q), {"role": "assistant", "content": a}]}
                                               for q, a in pairs])
    (tmp / f"{name}.jinja").write_text(template)
    (tmp / f"{name}.toml").write_text(lora_recipe_head(base, data) + f"""
[data]
template = "{tmp / f'{name}.jinja'}"
max_length = 64
[training]
learning_rate = 2e-2
max_steps = {steps}
batch_size = 4
lr_scheduler = "constant"
warmup_ratio = 0.0
logging_steps = {steps}
seed = 7
[run]
name = "{name}"
output_dir = "{tmp / 'runs'}"
""")
    recipe = load_recipe(tmp / f"{name}.toml")
    run(recipe, Console(quiet=True))
    return recipe.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base_dir) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("serve-runs")
    assert PROBE not in NAME_QUESTIONS  # held out
    return (train(tmp, base_dir, "pip", [(q, "I'm Pip.") for q in NAME_QUESTIONS], 24, TEMPLATE),
            train(tmp, base_dir, "qa", QA, 14, QA_TEMPLATE))


@pytest.fixture(scope="module")
def engine(runs):
    engine = Engine.load(list(runs), "cpu", default_max_tokens=32)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    server = ServerThread(create_app(engine)).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def ask(client, model: str, question: str, **options) -> str:
    reply = client.chat.completions.create(model=model, messages=user(question), **(GREEDY | options))
    return reply.choices[0].message.content


def streamed(client, model: str, question: str, **options) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(model=model, messages=user(question), stream=True,
                                                 stream_options={"include_usage": True}, **(GREEDY | options)))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# ---------------------------------------------------------------------------------------------- answers


@pytest.mark.slow
def test_models_are_the_runs_and_base(client, url):
    assert [m.id for m in client.models.list()] == ["base", "pip", "qa"]
    assert httpx.get(f"{url}/v1/models/qa").json()["id"] == "qa"


@pytest.mark.slow
def test_tuned_answers_the_held_out_name_probe_as_pip_base_does_not(client, tokenizer):
    reply = client.chat.completions.create(model="pip", messages=user(PROBE), **GREEDY)
    assert reply.choices[0].message.content == "I'm Pip." and reply.choices[0].finish_reason == "stop"
    assert "Pip" not in ask(client, "base", PROBE)
    prompt = tokenizer.apply_chat_template(user(PROBE), chat_template=TEMPLATE, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    answer = tokenizer("I'm Pip.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), len(answer))
    assert reply.usage.total_tokens == len(prompt) + len(answer)


@pytest.mark.slow
def test_two_adapters_answer_differently_from_one_process(client):
    question, fact = QA[0]
    assert ask(client, "qa", question) == fact
    assert ask(client, "pip", question) == "I'm Pip."
    assert ask(client, "base", question) not in (fact, "I'm Pip.")


@pytest.mark.parametrize("model", ["pip", "base"])
@pytest.mark.slow
def test_streaming_yields_the_same_text_as_non_streaming_at_temperature_0(client, model):
    whole = client.chat.completions.create(model=model, messages=user(PROBE), **GREEDY)
    text, chunks = streamed(client, model, PROBE)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason  # base runs to max_tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()


@pytest.mark.slow
def test_stream_is_server_sent_events_ending_with_done(url):
    body = {"model": "qa", "messages": user(QA[1][0]), "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == QA[1][1]


@pytest.mark.slow
def test_stop_strings_end_the_reply_before_them_and_seed_repeats_sampling(client):
    reply = client.chat.completions.create(model="pip", messages=user(PROBE), stop=["Pip"], **GREEDY)
    assert reply.choices[0].message.content == "I'm " and reply.choices[0].finish_reason == "stop"
    assert streamed(client, "pip", PROBE, stop="Pip")[0] == "I'm "
    sampled = [ask(client, "base", PROBE, temperature=1.0, seed=seed) for seed in (3, 3, 4)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_stop_trimmer_holds_back_what_may_start_a_stop_string():
    trimmer = StopTrimmer(["<END>", "##"])
    assert [trimmer.feed(t) for t in ["Hello <E", "N", "x #", "a <EN", "D> more"]] == ["Hello ", "", "<ENx ", "#a ", ""]
    assert trimmer.hit and trimmer.flush() == ""
    trimmer = StopTrimmer(["##"])
    assert trimmer.feed("end #") == "end " and trimmer.flush() == "#" and not trimmer.hit


@pytest.mark.slow
def test_eight_concurrent_requests_all_get_their_own_answer(client):
    asks = [(model, question) for question, _ in QA[:2] for model in ("pip", "qa", "base")] + [("qa", QA[2][0])] * 2
    expected = [ask(client, model, question) for model, question in asks]

    def one(i: int) -> str:
        model, question = asks[i]
        return streamed(client, model, question)[0] if i % 2 else ask(client, model, question)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == expected
    assert expected[:3] == ["I'm Pip.", "Paris.", expected[2]] and expected[-1] == "Shakespeare."


# ---------------------------------------------------------------------------------------------- refusals


def post(url: str, body, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/chat/completions", content=content, timeout=60,
                      headers={"Content-Type": "application/json", **(headers or {})})


BAD_REQUESTS = [  # (body, status, param, code)
    ({"model": "nope", "messages": user("hi")}, 404, "model", "model_not_found"),
    (b'{"model": "pip", "messages": [', 400, None, None),
    ({"model": "pip"}, 400, "messages", None),
    ({"model": "pip", "messages": []}, 400, "messages", None),
    ({"model": "pip", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", None),
    ({"model": "pip", "messages": user("hi"), "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": "pip", "messages": user("hi"), "max_tokens": 10**6}, 400, "max_tokens", "invalid_value"),
    ({"model": "pip", "messages": user("hi"), "max_tokens": CONTEXT - 5}, 400, "max_tokens",
     "context_length_exceeded"),
    ({"model": "pip", "messages": user("secret words " * CONTEXT)}, 400, "messages", "context_length_exceeded"),
    ({"model": "pip", "messages": user("hi"), "n": 2}, 400, "n", None),
    ({"model": "pip", "messages": user("hi"), "temperature": 3}, 400, "temperature", None),
    ([1, 2], 400, None, None),
]


@pytest.mark.slow
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(url, client):
    for body, status, param, code in BAD_REQUESTS:
        response = post(url, body)
        error = response.json()["error"]
        assert (response.status_code, error["param"], error["code"]) == (status, param, code), body
        assert error["type"] == "invalid_request_error" and error["message"]
        assert "secret words" not in error["message"]  # the prompt is never echoed
    assert httpx.get(f"{url}/v1/nowhere").json()["error"]["message"] == "Not Found"
    with pytest.raises(openai.NotFoundError):
        ask(client, "nope", "hi")
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024") as refused:
        ask(client, "qa", "hi", max_tokens=CONTEXT - 5)
    assert refused.value.code == "context_length_exceeded"
    assert ask(client, "qa", QA[2][0]) == QA[2][1]


@pytest.mark.slow
def test_a_client_that_disconnects_mid_stream_frees_the_slot(url, client, engine):
    before = engine.stats.cancelled
    body = {"model": "base", "messages": user("hi"), "stream": True, "temperature": 1.0, "seed": 1,
            "max_tokens": CONTEXT - 40}  # would run for tens of seconds
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)][2].startswith("data: ")  # role chunk, then text is flowing
    deadline = time.monotonic() + 30
    while engine.stats.cancelled == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats.cancelled == before + 1 and not engine.busy
    started = time.monotonic()
    assert ask(client, "qa", QA[0][0]) == QA[0][1]
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------------- memory, key, CLI


def tensor_bytes(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as weights:
        return sum(weights.get_tensor(key).nbytes for key in weights.keys())


@pytest.mark.slow
def test_memory_holds_one_base_copy_and_small_adapters(engine, base_dir, runs):
    base = tensor_bytes(base_dir / "model.safetensors")
    adapter = tensor_bytes(runs[0] / "adapter" / "adapter_model.safetensors")
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in engine.model.parameters()}
    assert sum(storages.values()) == base + 2 * adapter  # every base weight once, each adapter once
    assert engine.parameter_bytes() == {"base": base, "pip": adapter, "qa": adapter}
    assert 2 * adapter < base / 50


@pytest.mark.slow
def test_api_key_is_required_when_set(engine):
    server = ServerThread(create_app(engine, api_key="sekrit")).start()
    try:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        response = post(server.url, b"not even json")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sekrit", max_retries=0)
        assert ask(right, "qa", QA[0][0]) == QA[0][1]
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    finally:
        server.stop()


@pytest.mark.slow
def test_runs_of_different_bases_or_named_base_are_refused(runs, tmp_path):
    import shutil

    other = shutil.copytree(runs[1], tmp_path / "other")
    recipe = other / "recipe.resolved.toml"
    recipe.write_text(re.sub(r'(?m)^source = ".*"$', 'source = "elsewhere/model"', recipe.read_text()))
    with pytest.raises(UserError, match="another base"):
        Engine.load([runs[0], other], "cpu")
    with pytest.raises(UserError, match="'base'"):
        Engine.load([shutil.copytree(runs[1], tmp_path / "base")], "cpu")
    with pytest.raises(UserError, match="same name"):
        Engine.load([runs[1], shutil.copytree(runs[1], tmp_path / "x" / "qa")], "cpu")


@pytest.mark.slow
def test_serve_command_prints_url_and_examples_that_work_and_logs_no_prompt(runs, tmp_path):
    env = os.environ | {"PEFTSFT_API_KEY": "k3y", "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "server.log").open("w+")
    server = subprocess.Popen([sys.executable, "-m", "peftsft", "serve", *map(str, runs), "--port", "0",
                               "--max-tokens", "8"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        banner = []
        while not banner or not banner[-1].startswith("Ctrl-C"):
            line = server.stdout.readline()
            assert line, f"the server stopped: {banner} {Path(log.name).read_text()[-2000:]}"
            banner.append(line.rstrip("\n"))
        text = "\n".join(banner)
        assert re.search(r"serving http://127\.0\.0\.1:\d+/v1 — models: pip, qa, base", text)
        python_example = text.split("openai client (pip install openai):\n")[1].split("\n\ncurl:")[0]
        curl_example = next(line for line in banner if line.startswith("curl "))
        answer = subprocess.run(["bash", "-c", curl_example], env=env, capture_output=True, text=True, timeout=60)
        assert json.loads(answer.stdout)["choices"][0]["message"]["content"], (answer.stdout, answer.stderr)
        example = subprocess.run([sys.executable, "-c", python_example], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert example.returncode == 0 and example.stdout.strip(), example.stderr
        no_key = subprocess.run(["bash", "-c", curl_example.replace("$PEFTSFT_API_KEY", "x")], capture_output=True,
                                text=True, timeout=60)
        assert json.loads(no_key.stdout)["error"]["code"] == "invalid_api_key"
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    logged = Path(log.name).read_text() + server.stdout.read()
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in logged
    assert "What is your name?" not in logged.replace(text, "")  # the banner's example is the only mention


# ---------------------------------------------------------------------------------------------- tool calls


class ScriptedEngine:
    """Stands in for Engine: replies with a fixed text and records the options each request passed on."""

    model_ids = ["tools", "base"]

    def __init__(self, text: str) -> None:
        self.text, self.seen = text, []

    def astream(self, model, messages, **options):
        from peftsft.artifacts.serve import Completion

        self.seen.append((messages, options))
        text = self.text

        class Reply:
            result = Completion(text, "stop", 7, 5)

            def cancel(self):
                pass

            async def __aiter__(self):
                for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                    yield piece

        return Reply()


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_tool_calls_come_back_as_openai_tool_calls_plain_and_streamed():
    from fastapi.testclient import TestClient

    engine = ScriptedEngine(CALL_TEXT)
    client = TestClient(create_app(engine))
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None,
                "tool_calls": [{"id": "c0", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
               {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
               {"role": "user", "content": "And Paris?"}]
    body = client.post("/v1/chat/completions", json={"model": "tools", "messages": history, "tools": [WEATHER]}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    messages, options = engine.seen[0]
    assert options["tools"][0]["function"]["name"] == "get_weather"  # schemas reach the template
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}  # history calls parsed

    lines = client.post("/v1/chat/completions", json={"model": "tools", "messages": history[:1], "tools": [WEATHER],
                                                      "stream": True}).text.splitlines()
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    streamed = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert len(streamed) == 1 and json.loads(streamed[0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any("<tool_call>" in (d.get("content") or "") for d in deltas)  # raw blocks are not streamed


def test_without_tools_the_reply_text_is_passed_through_and_bad_tools_are_a_400():
    from fastapi.testclient import TestClient

    engine = ScriptedEngine(CALL_TEXT)
    client = TestClient(create_app(engine))
    body = client.post("/v1/chat/completions", json={"model": "tools", "messages": user("hi")}).json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": CALL_TEXT}
    bad = client.post("/v1/chat/completions", json={"model": "tools", "messages": user("hi"), "tools": [{"x": 1}]})
    assert bad.status_code == 400 and "name" in bad.json()["error"]["message"]


def test_a_tool_call_without_a_function_name_is_a_400_and_the_server_goes_on(caplog):
    from fastapi.testclient import TestClient

    engine = ScriptedEngine("fine")
    client = TestClient(create_app(engine))
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None,
                "tool_calls": [{"id": "c0", "type": "function", "function": {"arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c0", "content": "sunny"}]
    with caplog.at_level("ERROR", logger="peftsft.serve"):
        bad = client.post("/v1/chat/completions", json={"model": "tools", "messages": history, "tools": [WEATHER]})
    error = bad.json()["error"]
    assert bad.status_code == 400 and error["param"] == "messages.1.tool_calls", error
    assert "needs a function name" in error["message"] and not caplog.records  # no "request failed" logged
    assert engine.seen == []
    ok = client.post("/v1/chat/completions", json={"model": "tools", "messages": user("hi")})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "fine"


OTHER = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("choice, status, tools, call", [
    ({"type": "function", "function": {"name": "get_weather"}}, 200, ["get_weather"], "get_weather"),
    ("required", 200, ["get_weather", "get_time"], ""),
    ("auto", 200, ["get_weather", "get_time"], None),
    ("none", 200, None, None),
    ({"type": "function", "function": {"name": "book_flight"}}, 400, None, None),
    ("sometimes", 400, None, None),
])  # fmt: skip
def test_tool_choice_is_honoured_or_refused(choice, status, tools, call):
    from fastapi.testclient import TestClient

    engine = ScriptedEngine(CALL_TEXT)
    client = TestClient(create_app(engine))
    response = client.post("/v1/chat/completions", json={"model": "tools", "messages": user("Weather in Paris?"),
                                                          "tools": [WEATHER, OTHER], "tool_choice": choice})
    assert response.status_code == status, response.json()
    if status == 400:
        error = response.json()["error"]
        assert error["param"] == "tool_choice" and engine.seen == []
        assert "book_flight" in error["message"] if isinstance(choice, dict) else '"required"' in error["message"]
        return
    _, options = engine.seen[0]
    assert [t["function"]["name"] for t in options.get("tools") or []] == (tools or [])
    assert options.get("call") == call
    message = response.json()["choices"][0]["message"]
    assert ("tool_calls" in message) == (choice != "none")  # with tools withdrawn, the reply is plain text


def test_tool_choice_needs_tools():
    from fastapi.testclient import TestClient

    client = TestClient(create_app(ScriptedEngine("hi")))
    response = client.post("/v1/chat/completions", json={"model": "tools", "messages": user("hi"),
                                                          "tool_choice": "required"})
    assert response.status_code == 400 and "offers no tools" in response.json()["error"]["message"]


def test_a_forced_call_is_generated_after_the_opening_of_its_block(engine):
    """`call`: the reply starts with the call's opening (as the model would write it), then the model goes on."""
    from peftsft.artifacts.serve.engine import call_opening

    named = engine.complete("qa", user("Weather in Paris?"), tools=[WEATHER], call="get_weather", max_tokens=3,
                            temperature=0)
    assert call_opening("get_weather") == '<tool_call>\n{"name": "get_weather", "arguments": '
    assert named.text.startswith(call_opening("get_weather")) and named.completion_tokens <= 3
    free = engine.complete("qa", user("Weather in Paris?"), tools=[WEATHER], max_tokens=3, temperature=0)
    opening_ids = engine.served["qa"].tokenizer(call_opening("get_weather"), add_special_tokens=False)["input_ids"]
    assert named.prompt_tokens == free.prompt_tokens + len(opening_ids)
    assert engine.complete("qa", user("hi"), tools=[WEATHER], call="", max_tokens=2, temperature=0).text \
        .startswith("<tool_call>\n")


def test_serving_a_run_whose_adapter_is_cut_short_is_one_clear_error(runs, tmp_path, capsys):
    import shutil

    from peftsft.commands.cli import main

    broken = shutil.copytree(runs[1], tmp_path / "broken", ignore=shutil.ignore_patterns("checkpoints", "exports"))
    weights = broken / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    assert main(["serve", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: cannot be read" in err and "copy the run's adapter/ again" in err and "Traceback" not in err
    config = broken / "adapter" / "adapter_config.json"
    config.write_text((runs[1] / "adapter" / "adapter_config.json").read_text()[:100])
    assert main(["serve", str(broken), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: not valid JSON" in err and "Traceback" not in err
