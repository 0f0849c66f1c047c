"""A live uvicorn server on 127.0.0.1 (a thread of this process): the official `openai` client works
against it unchanged, a client that hangs up mid-stream frees its rows, and shutting down finishes the
requests in flight."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from tiny_server import NAME, OTHER, PASSAGES, PROMPT, live, make_app, tiny_parts

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "live-key"


@pytest.fixture(scope="module")
def parts(tokenizer, tmp_path_factory):
    return tiny_parts(tokenizer, tmp_path_factory.mktemp("serve"))


def test_the_openai_client_works_unchanged(parts) -> None:
    model, index, bm25 = parts
    with live(make_app(model, index, bm25, api_key=KEY)) as (url, _, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list()] == [NAME]

        done = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, extra_body={"k": 2})
        expected = model.generate([PROMPT], index=index, k=2, max_new_tokens=6)[0]
        assert done.choices[0].text == expected.text
        assert [p["text"] for p in done.model_extra["search_results"]] == [p.text for p in expected.passages]
        assert done.usage.completion_tokens == len(expected.token_ids)

        messages = [{"role": "user", "content": OTHER}]
        whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8)
        stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        assert chunks[-1].model_extra["search_results"] == whole.model_extra["search_results"]

        vectors = client.embeddings.create(
            model=NAME, input=PASSAGES[:2], extra_body={"input_type": "passage"}
        )
        got = np.array([d.embedding for d in vectors.data], dtype=np.float32)  # the client asked for base64
        np.testing.assert_allclose(got, model.embed_passages(PASSAGES[:2]).numpy(), rtol=1e-5, atol=1e-6)

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError, match="cap of 40"):
            client.completions.create(model=NAME, prompt=PROMPT, max_tokens=41)


def test_a_client_that_hangs_up_mid_stream_frees_its_rows(parts, monkeypatch) -> None:
    model, index, bm25 = parts
    ends: list[str] = []
    generate = model.generate

    def spy(*args, **kwargs):
        results = generate(*args, **kwargs)
        ends.extend(r.finish_reason for r in results)
        return results

    monkeypatch.setattr(model, "generate", spy)
    with live(make_app(model, index, bm25, max_tokens=4000)) as (url, _, _):
        body = {"prompt": PROMPT, "max_tokens": 4000, "stream": True, "k": 0}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break  # the first text chunk: hang up
        for _ in range(3000):
            if ends:
                break
            time.sleep(0.01)
        # the row ended long before 4,000 tokens, and the server still answers
        assert ends == ["cancelled"]
        r = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200


def test_shutting_down_finishes_the_requests_in_flight(parts) -> None:
    model, index, bm25 = parts
    with live(make_app(model, index, bm25, max_tokens=300)) as (url, server, thread):
        answers: list[httpx.Response] = []
        body = {"prompt": OTHER, "max_tokens": 300, "k": 2}
        asking = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/v1/completions", json=body, timeout=60))
        )
        asking.start()
        time.sleep(0.3)  # the request is being answered
        assert asking.is_alive(), "the request ended before the shutdown: make it longer"
        server.should_exit = True  # what SIGTERM sets
        asking.join(60)
        thread.join(60)
        assert not thread.is_alive()
    assert answers and answers[0].status_code == 200
    expected = model.generate([OTHER], index=index, k=2, max_new_tokens=300)[0]
    assert answers[0].json()["choices"][0]["text"] == expected.text and len(expected.token_ids) == 300


def test_base64_embeddings_are_little_endian_float32(parts) -> None:
    model, index, bm25 = parts
    with live(make_app(model, index, bm25)) as (url, _, _):
        r = httpx.post(
            f"{url}/v1/embeddings", json={"input": PROMPT, "encoding_format": "base64"}, timeout=30
        )
    vector = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    expected = model.index_query(model.embed_queries([PROMPT])).numpy()[0]
    np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
