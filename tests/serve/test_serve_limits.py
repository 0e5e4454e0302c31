"""``app=serve``'s limits and options on a small server (one slot, a queue of one): a full
queue (429), the body size limit (413), no API key, the model name and system prompt,
a port in use, and a graceful stop with a stream in flight."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import httpx
import pytest
from serving import BIN, Server

HI = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def small(serve_model_dir, tmp_path_factory):
    srv = Server(serve_model_dir, tmp_path_factory.mktemp("serve-small"), "app.max_batch=1", "app.max_queue=1",
                 "app.max_body_bytes=4096", "app.model_name=tiny-sea", "app.system_prompt=You are terse.",
                 "app.shutdown_timeout=0")
    yield srv
    srv.stop()


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": "tiny-sea", "messages": HI, **body}, timeout=60)


def test_model_name_and_system_prompt_options(small, reference):
    assert [m["id"] for m in httpx.get(small.url + "/v1/models").json()["data"]] == ["tiny-sea"]  # no key needed
    with_system = [{"role": "system", "content": "You are terse."}, *HI]
    r = chat(small.url, max_tokens=12, temperature=0)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == reference(messages=with_system, max_tokens=12)[0]
    own = [{"role": "system", "content": "Answer in French."}, *HI]  # a chat's own system message wins
    r = chat(small.url, messages=own, max_tokens=12, temperature=0)
    assert r.json()["choices"][0]["message"]["content"] == reference(messages=own, max_tokens=12)[0]


def test_a_full_queue_is_refused_with_429(small):
    """One slot and one queue place: of ten requests sent at once, those that find both taken get 429."""
    responses: list[httpx.Response] = []
    start = threading.Barrier(10)

    def send():
        start.wait()
        responses.append(chat(small.url, max_tokens=200, temperature=0))

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
    refused = next(r for r in responses if r.status_code == 429).json()["error"]
    assert (refused["type"], refused["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "retry later" in refused["message"]


def test_a_body_over_the_limit_is_refused_with_413(small):
    big = json.dumps({"model": "tiny-sea", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    declared = httpx.post(small.url + "/v1/chat/completions", content=big,
                          headers={"Content-Type": "application/json"})
    chunked = httpx.post(small.url + "/v1/chat/completions", content=iter([big[:3000], big[3000:]]),
                         headers={"Content-Type": "application/json"})  # no Content-Length to trust
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large" and "4096 bytes" in r.json()["error"]["message"]
    assert "transfer-encoding" in chunked.request.headers


def test_a_port_in_use_is_a_one_line_error(small, tmp_path):
    port = small.url.rsplit(":", 1)[1]
    env = {**os.environ, "PLUGSTACK_OUTPUTS": str(tmp_path)}
    result = subprocess.run([str(BIN), "app=serve", "model=llama", "model.path=/nonexistent", f"app.port={port}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert f"plugstack: error: Cannot listen on 127.0.0.1:{port}" in result.stderr  # before the model would load
    assert "app.port=0" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_ends_a_stream_in_flight_cleanly(small):
    """shutdown_timeout=0: a running stream is cancelled at once, with an error event and [DONE]."""
    body = {"model": "tiny-sea", "prompt": "Hi", "max_tokens": 250, "temperature": 0, "stream": True}
    with httpx.stream("POST", small.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = next(lines)
        small.process.send_signal(15)
        events = [first, *(line for line in lines if line)]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert (error["code"], error["type"]) == ("request_cancelled", "server_error")
    assert "shutting down" in error["message"]
    assert small.stop() == 143
    [done] = small.events("engine.done")[-1:]
    assert done["finish_reason"] == "cancelled" and done["error"] == "the server is shutting down"
    assert small.events("serve.stopped") and "Traceback" not in "".join(small.lines)
