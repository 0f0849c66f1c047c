"""`imprag serve`'s app on a tiny random llama and a 12-passage in-memory index: every route's shape, and
its answers equal to the library's own calls (generate, retrieve, embed_*), streamed or not, batched or
alone."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tiny_server import NAME, OTHER, PASSAGES, PROMPT, make_app, tiny_parts

from imprag.serve.app import plain_chat

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts(tokenizer, tmp_path_factory):
    return tiny_parts(tokenizer, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def model(parts):
    return parts[0]


@pytest.fixture(scope="module")
def index(parts):
    return parts[1]


@pytest.fixture(scope="module")
def bm25(parts):
    return parts[2]


@pytest.fixture(scope="module")
def client(model, index, bm25):
    with TestClient(make_app(model, index, bm25)) as c:
        yield c


def events(response) -> list[dict | str]:
    """The server-sent events of a streamed response, in order ("[DONE]" as a string)."""
    out: list[dict | str] = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            body = block.removeprefix("data: ")
            out.append(body if body == "[DONE]" else json.loads(body))
    return out


# -- completions ---------------------------------------------------------------------------------------


def test_a_completion_is_generate_over_the_index(client, model, index) -> None:
    r = client.post("/v1/completions", json={"model": NAME, "prompt": PROMPT, "k": 2, "max_tokens": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = model.generate([PROMPT], index=index, k=2, max_new_tokens=7)[0]
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and body["model"] == NAME and body["id"].startswith("cmpl-")
    assert choice["text"] == expected.text and choice["index"] == 0
    assert (
        choice["finish_reason"] == {"eos": "stop", "stop": "stop", "length": "length"}[expected.finish_reason]
    )
    found = [(p["id"], p["text"]) for p in body["search_results"]]
    assert found == [(p.id, p.text) for p in expected.passages] and len(found) == 2
    assert [p["score"] for p in body["search_results"]] == pytest.approx([p.score for p in expected.passages])
    assert choice["search_results"] == body["search_results"]
    n_prompt = len(model.tokenizer(PROMPT)["input_ids"])
    assert body["usage"] == {
        "prompt_tokens": n_prompt,
        "completion_tokens": len(expected.token_ids),
        "total_tokens": n_prompt + len(expected.token_ids),
    }


def test_k_0_is_closed_book_and_given_passages_are_read_instead(client, model) -> None:
    closed = client.post("/v1/completions", json={"prompt": PROMPT, "k": 0, "max_tokens": 6}).json()
    assert closed["choices"][0]["text"] == model.generate([PROMPT], max_new_tokens=6)[0].text
    assert closed["search_results"] == []
    given = ["Veloria's capital is Quantum City.", "Quantum City lies on a river."]
    r = client.post("/v1/completions", json={"prompt": PROMPT, "passages": given, "max_tokens": 6}).json()
    expected = model.generate([PROMPT], passages=[given], max_new_tokens=6)[0]
    assert r["choices"][0]["text"] == expected.text
    assert [p["text"] for p in r["search_results"]] == given and r["search_results"][0]["score"] is None


def test_several_prompts_are_several_choices_in_order(client, model, index) -> None:
    r = client.post("/v1/completions", json={"prompt": [PROMPT, OTHER], "k": 1, "max_tokens": 5}).json()
    expected = model.generate([PROMPT, OTHER], index=index, k=1, max_new_tokens=5)
    assert [c["text"] for c in r["choices"]] == [g.text for g in expected]
    assert [c["search_results"][0]["text"] for c in r["choices"]] == [g.passages[0].text for g in expected]


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("sampled", [False, True])
def test_streamed_chunks_concatenate_to_the_answer(client, chat: bool, sampled: bool) -> None:
    route = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict = {"max_tokens": 12, "k": 2, "seed": 5, "stop": ["zz"]}
    body |= {"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT}
    if sampled:
        body["temperature"] = 1.3
    whole = client.post(route, json=body).json()
    streamed = client.post(route, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert chunks[-1] == "[DONE]"
    usage, last = chunks[-2], chunks[-3]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    pieces = chunks[:-3]
    if chat:
        assert pieces[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"]["content"] for c in pieces)
        expected = whole["choices"][0]["message"]["content"]
        assert last["object"] == "chat.completion.chunk"
    else:
        text = "".join(c["choices"][0]["text"] for c in pieces)
        expected = whole["choices"][0]["text"]
    assert len(pieces) > 2 and text == expected and expected, (pieces, expected, whole)
    assert all(c["choices"][0]["finish_reason"] is None for c in pieces)
    assert last["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert last["search_results"] == whole["search_results"] and len(last["search_results"]) == 2


def test_chat_messages_become_one_prompt(client, model, index) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPT}]
    r = client.post("/v1/chat/completions", json={"messages": messages, "k": 2, "max_tokens": 6}).json()
    rendered = plain_chat(messages)  # the tiny tokenizer has no chat template
    assert rendered == "Answer briefly.\n" + PROMPT
    expected = model.generate([rendered], index=index, k=2, max_new_tokens=6)[0]
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    assert r["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    talk = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Q?"},
    ]
    assert plain_chat(talk) == "User: Hi\nAssistant: Hello\nUser: Q?\nAssistant:"


def test_concurrent_requests_are_batched_and_answer_as_each_alone(model, index, bm25) -> None:
    app = make_app(model, index, bm25, batch_wait_ms=300)
    batches: list[int] = []
    bodies = [{"prompt": p, "k": 2, "max_tokens": 6, "seed": 1} for p in (PROMPT, OTHER, PROMPT)]
    bodies[2] = {**bodies[2], "temperature": 1.2}  # other decoding settings: a batch of its own

    async def run() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as c,
        ):
            engine = app.state.engine
            engine.on_batch = batches.append
            together = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
            alone = [await c.post("/v1/completions", json=b) for b in bodies]
            return [r.json() for r in together], [r.json() for r in alone]

    together, alone = asyncio.run(run())
    assert sorted(batches[:2]) == [1, 2] and batches[2:] == [1, 1, 1]
    for a, b in zip(together, alone, strict=True):
        assert a["choices"][0]["text"] == b["choices"][0]["text"]
        assert [h["id"] for h in a["search_results"]] == [h["id"] for h in b["search_results"]]
        scores = [h["score"] for h in b["search_results"]]
        assert [h["score"] for h in a["search_results"]] == pytest.approx(scores, rel=1e-5)  # batch rounding


# -- vectors and retrieval -----------------------------------------------------------------------------


def test_embeddings_are_the_query_and_passage_vectors_whose_dot_is_the_retrieval_score(
    client, model, index
) -> None:
    q = client.post("/v1/embeddings", json={"input": [PROMPT, OTHER], "model": NAME}).json()
    assert q["object"] == "list" and [d["index"] for d in q["data"]] == [0, 1]
    e_q = np.array([d["embedding"] for d in q["data"]], dtype=np.float32)
    expected = model.index_query(model.embed_queries([PROMPT, OTHER])).numpy()
    np.testing.assert_allclose(e_q, expected, rtol=1e-5, atol=1e-6)
    packed = client.post(
        "/v1/embeddings", json={"input": PASSAGES[:3], "input_type": "passage", "encoding_format": "base64"}
    ).json()
    e_p = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    np.testing.assert_allclose(e_p, model.embed_passages(PASSAGES[:3]).numpy(), rtol=1e-5, atol=1e-6)
    hits = client.post("/v1/retrieve", json={"input": PROMPT, "k": 3}).json()["data"][0]["search_results"]
    for hit in hits:
        row = PASSAGES.index(hit["text"])
        vector = model.embed_passages([PASSAGES[row]]).numpy()[0]
        assert float(e_q[0] @ vector) == pytest.approx(hit["score"], rel=1e-4, abs=1e-5)
    assert q["usage"]["prompt_tokens"] == sum(len(model.tokenizer(t)["input_ids"]) for t in (PROMPT, OTHER))


def test_retrieve_with_the_implicit_query_or_a_baseline(client, model, index, bm25) -> None:
    r = client.post("/v1/retrieve", json={"input": [PROMPT, OTHER], "k": 4}).json()
    expected = model.retrieve([PROMPT, OTHER], index, k=4)
    assert r["retriever"] == "implicit"
    assert [[h["text"] for h in d["search_results"]] for d in r["data"]] == [
        [p.text for p in e] for e in expected
    ]
    b = client.post("/v1/retrieve", json={"input": OTHER, "k": 2, "retriever": "bm25"}).json()
    assert [h["id"] for h in b["data"][0]["search_results"]] == [p.id for p in bm25.retrieve([OTHER], 2)[0]]
    assert b["data"][0]["search_results"][0]["text"] == PASSAGES[3]  # "Nile" and "flow" are its words
    missing = client.post("/v1/retrieve", json={"input": OTHER, "retriever": "minilm"})
    assert missing.status_code == 400 and "--baselines" in missing.json()["error"]["message"]


# -- the server itself ---------------------------------------------------------------------------------


def test_models_health_metrics_and_the_playground(client, model) -> None:
    assert client.get("/v1/models").json()["data"][0]["id"] == NAME
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_fingerprint"] == model.model_fingerprint()
    assert health["index"]["passages"] == len(PASSAGES) and health["index"]["retrievers"] == [
        "implicit",
        "bm25",
    ]
    client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3})
    text = client.get("/metrics").text
    for name in (
        "imprag_requests_total",
        "imprag_request_seconds_bucket",
        "imprag_tokens_total",
        "imprag_batch_size_bucket",
        "imprag_queue_depth",
        "imprag_time_to_first_token_seconds",
    ):
        assert name in text, name
    assert 'imprag_requests_total{route="/v1/completions",status="200"}' in text
    page = client.get("/")
    assert page.status_code == 200 and "<title>imprag playground</title>" in page.text and NAME in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_a_failing_batch_is_a_500_in_the_same_shape_and_the_server_goes_on(
    model, index, bm25, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with TestClient(make_app(model, index, bm25), raise_server_exceptions=False) as c:
        monkeypatch.setattr(model, "generate", broken)
        r = c.post("/v1/completions", json={"prompt": PROMPT})
        assert r.status_code == 500 and "server log" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "server_error"
        chunks = events(c.post("/v1/completions", json={"prompt": PROMPT, "stream": True}))
        assert (
            "server log" in chunks[-2]["error"]["message"] and chunks[-1] == "[DONE]"
        )  # an error event ends it
        monkeypatch.undo()
        assert c.post("/v1/completions", json={"prompt": PROMPT}).status_code == 200
