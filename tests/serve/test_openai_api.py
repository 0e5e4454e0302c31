"""``app=serve`` as OpenAI's own client sees it: one real server process on loopback,
answers compared with ``plugstack.generate`` alone on the same model (greedy)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from serving import API_KEY, Server

HI = [{"role": "user", "content": "Hello! What is the sea like tonight?"}]


@pytest.fixture(scope="module")
def server(serve_model_dir, tmp_path_factory):
    """The key comes from PLUGSTACK_API_KEY; DEBUG logs show every engine step."""
    srv = Server(serve_model_dir, tmp_path_factory.mktemp("serve"), "log.level=DEBUG", api_key=API_KEY)
    yield srv
    srv.assert_stopped_cleanly()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def headers(**extra):
    return {"Authorization": f"Bearer {API_KEY}", **extra}


def test_binds_loopback_and_lists_the_model(server, client):
    assert server.url.startswith("http://127.0.0.1:")
    [model] = client.models.list().data
    assert (model.id, model.object, model.owned_by) == ("llama", "model", "plugstack")
    assert client.models.retrieve("llama").id == "llama"
    health = httpx.get(server.url + "/health").json()
    assert health == {"status": "ok", "model": "llama", "backend": "cpu", "running": 0, "waiting": 0, "max_batch": 8}


def test_chat_completion_is_the_greedy_answer(client, reference):
    r = client.chat.completions.create(model="llama", messages=HI, max_tokens=24, temperature=0)
    text, finish = reference(messages=HI, max_tokens=24)
    choice = r.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", text, finish)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "llama"
    assert r.usage.completion_tokens == 24 and r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_streamed_chat_deltas_join_to_the_non_streamed_answer(client):
    whole = client.chat.completions.create(model="llama", messages=HI, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model="llama", messages=HI, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) > 5  # really streamed, piece by piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    *body, last = chunks
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in body)


def test_completion_and_its_stream(client, reference):
    prompt = "The sea is calm tonight."
    r = client.completions.create(model="llama", prompt=prompt, max_tokens=20, temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == reference(prompt=prompt, max_tokens=20)
    assert r.object == "text_completion" and r.usage.completion_tokens == 20
    chunks = list(client.completions.create(model="llama", prompt=[prompt], max_tokens=20, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    default = client.completions.create(model="llama", prompt=prompt, temperature=0)
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions


def test_stop_strings_cut_the_answer(client, reference):
    full, _ = reference(messages=HI, max_tokens=40)
    stop = full[10:16]  # six characters from the middle of the greedy answer
    cut = full[: full.index(stop)]
    r = client.chat.completions.create(model="llama", messages=HI, max_tokens=40, temperature=0, stop=stop)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (cut, "stop")
    streamed = client.chat.completions.create(model="llama", messages=HI, max_tokens=40, temperature=0,
                                              stop=["never appears \u2603", stop], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut


def test_ignore_eos_generates_every_token_asked_for(client):
    """vLLM's and llama-server's extension (for benchmarks): the answer runs to max_tokens."""
    plain = client.chat.completions.create(model="llama", messages=HI, max_tokens=200, temperature=0)
    long = client.chat.completions.create(model="llama", messages=HI, max_tokens=200, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 200 and long.choices[0].finish_reason == "length"
    assert long.choices[0].message.content.startswith(plain.choices[0].message.content.rstrip())


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        r = client.chat.completions.create(model="llama", messages=HI, max_tokens=24, temperature=1.0,
                                           top_p=0.9, seed=seed)
        return r.choices[0].message.content

    assert sample(3) == sample(3) != sample(4)


def test_a_wrong_or_missing_api_key_is_refused(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    for sent in ({}, {"Authorization": API_KEY}, {"Authorization": "Basic " + API_KEY}):
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "llama", "messages": HI}, headers=sent)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


CHAT = {"model": "llama", "messages": HI}
#: (what is wrong, endpoint, body, status, param, code)
ERRORS = [
    ("malformed JSON", "chat/completions", b'{"model": "llama", "messages": [', 400, None, None),
    ("not an object", "chat/completions", [1, 2], 400, None, None),
    ("missing model", "chat/completions", {"messages": HI}, 400, "model", None),
    ("messages not a list", "chat/completions", {**CHAT, "messages": "hi"}, 400, "messages", "invalid_type"),
    ("a role it does not know", "chat/completions", {**CHAT, "messages": [{"role": "tool", "content": "x"}]},
     400, "messages.0.role", "invalid_value"),
    ("an image part", "chat/completions", {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400, "messages.0.content.0.type",
     "invalid_value"),
    ("temperature a string", "chat/completions", {**CHAT, "temperature": "0.5"}, 400, "temperature", "invalid_type"),
    ("max_tokens a float", "completions", {"model": "llama", "prompt": "x", "max_tokens": 1.5}, 400, "max_tokens",
     "invalid_type"),
    ("unknown argument", "chat/completions", {**CHAT, "temprature": 0}, 400, "temprature", None),
    ("unknown model", "chat/completions", {**CHAT, "model": "gpt-4o"}, 404, "model", "model_not_found"),
    ("prompt longer than the context", "completions", {"model": "llama", "prompt": "The sea is calm. " * 200,
                                                       "max_tokens": 8}, 400, "prompt", "context_length_exceeded"),
    ("chat longer than the context", "chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "The sea is calm. " * 200}]}, 400, "messages",
     "context_length_exceeded"),
    ("max_tokens past the context", "chat/completions", {**CHAT, "max_tokens": 300}, 400, "max_tokens", None),
    ("max_tokens over the limit", "chat/completions", {**CHAT, "max_completion_tokens": 5000}, 400,
     "max_completion_tokens", None),
    ("max_tokens zero", "chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("negative temperature", "chat/completions", {**CHAT, "temperature": -0.5}, 400, "temperature", "invalid_value"),
    ("temperature above 2", "completions", {"model": "llama", "prompt": "x", "temperature": 2.5}, 400,
     "temperature", "invalid_value"),
    ("top_p zero", "chat/completions", {**CHAT, "top_p": 0}, 400, "top_p", "invalid_value"),
    ("negative seed", "chat/completions", {**CHAT, "seed": -1}, 400, "seed", None),
    ("empty stop string", "chat/completions", {**CHAT, "stop": [""]}, 400, "stop", None),
    ("five stop strings", "chat/completions", {**CHAT, "stop": list("abcde")}, 400, "stop", "invalid_value"),
    ("n=2", "chat/completions", {**CHAT, "n": 2}, 400, "n", None),
    ("logprobs", "chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs", "unsupported_parameter"),
    ("tools", "chat/completions", {**CHAT, "tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter"),
    ("a batch of prompts", "completions", {"model": "llama", "prompt": ["a", "b"]}, 400, "prompt", None),
    ("stream_options without stream", "chat/completions", {**CHAT, "stream_options": {"include_usage": True}},
     400, "stream_options", None),
]


@pytest.mark.parametrize(("what", "endpoint", "body", "status", "param", "code"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_have_openai_shape_and_status(server, what, endpoint, body, status, param, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server.url}/v1/{endpoint}", content=content,
                   headers=headers(**{"Content-Type": "application/json"}), timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert (error["param"], error["code"]) == (param, code), error
    assert len(error["message"]) > 20 and "Traceback" not in error["message"]
    assert r.headers["x-request-id"]


def test_unknown_paths_and_methods_answer_in_openai_shape(server):
    missing = httpx.get(server.url + "/v1/engines", headers=headers())
    wrong = httpx.get(server.url + "/v1/chat/completions", headers=headers())
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert "Not Found" in missing.json()["error"]["message"]
    assert "Method Not Allowed" in wrong.json()["error"]["message"]


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "sea " * 300}])


PROMPTS = ["Hi", "What is the capital of France?", "Write a haiku about the sea", "1 2 3 4",
           "Tell me about emoji \U0001f30a", "def add(a, b):", "Paris is", "Why is the sea calm tonight?"]


def test_concurrent_clients_are_batched_and_each_gets_its_alone_answer(server, client, reference):
    """8 clients at once, while a long request is already decoding: every answer is the one
    that prompt gets alone, and the log shows batched steps and joins into a running batch."""
    alone = [reference(messages=[{"role": "user", "content": p}], max_tokens=32) for p in PROMPTS]
    assert len(set(alone)) == len(PROMPTS)  # a mix-up between requests would show
    long = client.chat.completions.create(model="llama", messages=HI, max_tokens=200, temperature=0, stream=True)
    next(iter(long))  # it is decoding now
    answers: list = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def ask(i):
        start.wait()
        r = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": PROMPTS[i]}],
                                           max_tokens=32, temperature=0)
        answers[i] = (r.choices[0].message.content, r.choices[0].finish_reason)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    long.close()
    assert answers == alone
    assert max(e["batch"] for e in server.events("engine.step")) > 1
    assert any(e["running"] >= 1 for e in server.events("engine.join"))
    shared = [e["max_batch"] for e in server.events("engine.done") if e["completion_tokens"] == 32]
    assert sum(b > 1 for b in shared) >= len(PROMPTS) // 2  # most of them decoded alongside others


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    body = {"model": "llama", "messages": HI, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", server.url + "/v1/chat/completions", json=body,
                                                       headers=headers()) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        assert next(lines).startswith("data: ") and next(lines) == ""  # one event read, then hang up
    done = wait_for(server, "engine.done", request_id)
    assert done["finish_reason"] == "cancelled" and done["completion_tokens"] < 200
    assert httpx.get(server.url + "/health").json()["running"] == 0
    access = wait_for(server, "http.request", request_id)
    assert access["status"] == 200 and access["path"] == "/v1/chat/completions"


def test_every_request_has_an_access_log_line(server, client):
    raw = client.chat.completions.with_raw_response.create(model="llama", messages=HI, max_tokens=3, temperature=0)
    line = wait_for(server, "http.request", raw.headers["x-request-id"])
    assert line["status"] == 200 and line["completion_tokens"] == 3 and line["latency_ms"] > 0
    assert line["method"] == "POST" and line["run_id"] and line["app"] == "serve"


def wait_for(server, event: str, request_id: str) -> dict:
    """The server's ``event`` log line for ``request_id`` (log lines come a moment after the answer)."""
    deadline = time.monotonic() + 20
    while not (found := [e for e in server.events(event) if e["request_id"] == request_id]):
        assert time.monotonic() < deadline, f"no {event} line for {request_id}"
        time.sleep(0.05)
    [line] = found
    return line
