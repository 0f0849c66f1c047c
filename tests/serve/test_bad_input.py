"""Every bad request gets a 4xx in OpenAI's error shape whose message says what to change, never a 500,
and the server answers the next good request as before."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from tiny_server import NAME, PROMPT, make_app, tiny_parts

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = "zq " * 2000  # 6,000 tokens: past the tiny model's 4,096 positions, under the 20 kB body cap


@pytest.fixture(scope="module")
def client(tokenizer, tmp_path_factory):
    model, index, bm25 = tiny_parts(tokenizer, tmp_path_factory.mktemp("serve"))
    with TestClient(make_app(model, index, bm25, api_key=KEY), raise_server_exceptions=False) as c:
        yield c


def completion(**fields) -> dict:
    return {"prompt": PROMPT, "max_tokens": 4, **fields}


CMP, CHAT, EMB, RET = "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/retrieve"
CASES = [
    # (name, route, body (dict, or str sent as is), status, words the message must hold, param)
    ("malformed JSON", CMP, '{"prompt": "Q: hi', 400, "not valid JSON", None),
    ("not an object", CMP, "[1, 2]", 400, "JSON object", None),
    ("missing prompt", CMP, {"max_tokens": 3}, 400, "prompt is required", "prompt"),
    ("prompt of wrong type", CMP, completion(prompt=7), 400, "prompt", "prompt"),
    ("empty prompt", CMP, completion(prompt="   "), 400, "prompt 0 is empty", "prompt"),
    ("empty prompt list", CMP, completion(prompt=[]), 400, "empty list", "prompt"),
    ("unknown field", CMP, completion(max_token=3), 400, "unknown field 'max_token'", "max_token"),
    ("max_tokens wrong type", CMP, completion(max_tokens="many"), 400, "max_tokens", "max_tokens"),
    ("max_tokens 0", CMP, completion(max_tokens=0), 400, "greater than or equal to 1", "max_tokens"),
    ("max_tokens over the cap", CMP, completion(max_tokens=41), 400, "cap of 40", "max_tokens"),
    ("k over the cap", CMP, completion(k=7), 400, "lower k", "k"),
    ("k negative", CMP, completion(k=-1), 400, "greater than or equal to 0", "k"),
    ("k and passages", CMP, completion(k=2, passages=["a"]), 400, "not both", None),
    ("too many passages", CMP, completion(passages=["p"] * 7), 400, "at most 6", "passages"),
    ("empty passage", CMP, completion(passages=[""]), 400, "non-empty", "passages"),
    ("over-long prompt", CMP, completion(prompt=LONG), 400, "shorten it", "prompt"),
    ("too many prompts", CMP, completion(prompt=["a"] * 9), 400, "at most 8", "prompt"),
    ("n=2", CMP, completion(n=2), 400, "n=2 is not supported", None),
    ("logprobs", CMP, completion(logprobs=3), 400, "logprobs=3 is not supported", None),
    ("temperature too high", CMP, completion(temperature=3), 400, "temperature", "temperature"),
    ("top_p 0", CMP, completion(top_p=0), 400, "top_p", "top_p"),
    ("five stops", CMP, completion(stop=list("abcde")), 400, "up to 4", "stop"),
    ("another model", CMP, completion(model="gpt-4o"), 404, f"serves '{NAME}'", "model"),
    ("no messages", CHAT, {"messages": []}, 400, "messages", "messages"),
    ("unknown role", CHAT, {"messages": [{"role": "robot", "content": "hi"}]}, 400,
     "role", "messages.0.role"),
    ("empty chat", CHAT, {"messages": [{"role": "user", "content": " "}]}, 400,
     "every message is empty", None),
    ("tools", CHAT, {"messages": [{"role": "user", "content": "hi"}], "tools": [{"x": 1}]},
     400, "tools", None),
    ("embedding of nothing", EMB, {"input": []}, 400, "empty list", "input"),
    ("embedding type", EMB, {"input": "x", "input_type": "document"}, 400, "input_type",
     "input_type"),
    ("embedding format", EMB, {"input": "x", "encoding_format": "int8"}, 400, "encoding_format",
     "encoding_format"),
    ("retrieve k over the index", RET, {"input": "x", "k": 13}, 400, "lower k", "k"),
    ("retriever unknown", RET, {"input": "x", "retriever": "google"}, 400, "retriever", "retriever"),
]  # fmt: skip


@pytest.mark.parametrize("name, route, body, status, words, param", CASES, ids=[c[0] for c in CASES])
def test_bad_requests_get_a_4xx_that_says_what_to_change(
    client, name, route, body, status, words, param
) -> None:
    raw = body if isinstance(body, str) else json.dumps(body)
    r = client.post(route, content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"], error
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert client.post("/v1/completions", json=completion(), headers=AUTH).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_a_missing_or_wrong_key_is_401_on_every_keyed_route(client, headers) -> None:
    for method, route in [("post", "/v1/completions"), ("get", "/v1/models"), ("get", "/metrics"),
                          ("post", "/v1/embeddings"), ("post", "/v1/retrieve")]:  # fmt: skip
        r = getattr(client, method)(
            route, headers=headers, **({"json": completion()} if method == "post" else {})
        )
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"], route
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200  # open routes


def test_a_body_over_the_cap_is_413_whether_or_not_it_says_its_length(client) -> None:
    big = json.dumps(completion(prompt="x " * 15_000))  # ~30 kB, the cap is 20 kB
    r = client.post("/v1/completions", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "cap of 20000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the body arrives chunked and is counted as it comes
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096].encode()

    r = client.post("/v1/completions", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "cap of 20000 bytes" in r.json()["error"]["message"]


def test_unknown_routes_and_methods_are_4xx_in_the_same_shape(client) -> None:
    r = client.get("/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and "no such route" in r.json()["error"]["message"]
    r = client.get("/v1/completions", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
