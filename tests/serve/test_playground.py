"""The playground page in a real headless Chromium (Debian's `chromium`, driven by Playwright): a person
types a prompt, clicks Ask, and sees the streamed answer, the passages the model read and BM25's picks.

Skipped where Chromium or Playwright is absent (CI installs neither): `apt-get install chromium` and
`pip install playwright` (no browser download: it drives /usr/bin/chromium) run it."""

from __future__ import annotations

import importlib.util
import shutil

import httpx
import pytest
from tiny_server import PROMPT, live, make_app, tiny_parts

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="Playwright is not installed (pip install playwright)",
    ),
]
# Flags for a root user on a machine with no network beyond loopback (the env's notes).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_a_person_asks_and_sees_the_answer_the_passages_and_bm25s_picks(tokenizer, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    model, index, bm25 = tiny_parts(tokenizer, tmp_path)
    with live(make_app(model, index, bm25)) as (url, _, _), sync_playwright() as p:
        expected = httpx.post(
            f"{url}/v1/completions", json={"prompt": PROMPT, "k": 2, "max_tokens": 16, "stop": ["\n"]}
        ).json()
        bm25_titles = [h.title for h in bm25.retrieve([PROMPT], 2)[0]]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#prompt", PROMPT)
            page.fill("#k", "2")
            page.fill("#max_tokens", "16")
            page.select_option("#baseline", "bm25")
            page.click("#ask")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('finished')")
            page.wait_for_function("document.querySelectorAll('#compare li').length === 2")
            answer = page.inner_text("#answer")
            read = page.locator("#implicit li").all_inner_texts()
            picks = page.locator("#compare li b").all_inner_texts()
        finally:
            browser.close()
    assert answer == expected["choices"][0]["text"]
    assert len(read) == 2 and all(
        h["text"] in r for h, r in zip(expected["search_results"], read, strict=True)
    )
    assert picks == bm25_titles
