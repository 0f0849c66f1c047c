"""Nothing lost, ever: the careful user's probe of issue 16, rerun and counted.

Three parts, each through the real `imprag` command in fresh processes, on a tiny random llama (SmolLM2's
tokenizer, 4 layers) saved to a temporary folder and a 3,000-passage slice of the embedded corpus:

1. **Bad inputs**: every case below runs one command against a damaged or wrong input. A case passes when
   the command exits 2 with one line on stderr and no traceback (or, for the few inputs that are legal,
   exits 0). Every output folder a case points at first gets a file of the user's (`USER_FILE`); after all
   cases, each such file must still be there, byte for byte ("data lost" counts the ones that are not).
2. **kill -9 during `imprag index`** at random points (seeded) of the build itself (after its `build.json`
   appears, so not during start-up), then the same command again: the resumed index must hold
   bit-identical vectors and the same passages as an uninterrupted build.
3. **Concurrent writers**: two `imprag update --add` (different passages) started together, and two
   `imprag index` builds into one new folder: each must succeed or stop with the lock's one-line message,
   and the index must stay consistent (as many vectors as stored passages; every added passage that was
   reported added is searchable by its own vector).

Run:  .venv/bin/python benchmarks/probe_robustness.py [--kills 5] [--seed 0]
      (about 5 minutes on 2 cores; writes benchmarks/results/probe_robustness.json and prints the counts)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results" / "probe_robustness.json"
USER_FILE = "my-notes.txt"
USER_TEXT = "years of work\n"
IMPRAG = str(Path(sys.executable).parent / "imprag")


@dataclass
class Case:
    name: str
    argv: list[str]
    setup: Callable[[Path], None] = lambda root: None
    legal: bool = False  # an input the command should accept (exit 0)
    guarded: list[str] = field(default_factory=list)  # folders (relative to root) that hold a user file


def run(argv: list[str], root: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [a.replace("ROOT", str(root)) for a in argv]
    return subprocess.run([IMPRAG, *argv], capture_output=True, text=True, timeout=timeout, cwd=root)


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def fixtures(root: Path, passages: int) -> None:
    """A tiny random llama with SmolLM2's tokenizer, a corpus slice, a built index, a prompts file."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from imprag.model.defaults import resolve
    from imprag.retrieval.corpus import read_corpus

    path, _ = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = []
    for i, p in enumerate(read_corpus("wiki-summaries")):
        if i == passages:
            break
        rows.append(json.dumps({"id": p.id, "title": p.title, "text": p.text}))
    write(root / "corpus.jsonl", "\n".join(rows) + "\n")
    write(root / "small.jsonl", "\n".join(rows[:200]) + "\n")
    write(root / "add-a.jsonl", "\n".join(r.replace('"id": "', '"id": "a-', 1) for r in rows[200:230]) + "\n")
    write(root / "add-b.jsonl", "\n".join(r.replace('"id": "', '"id": "b-', 1) for r in rows[230:260]) + "\n")
    write(root / "prompts.txt", "Q: What is the capital of France? A:\nQ: Who wrote Hamlet? A:\n")
    out = run(
        ["index", "ROOT/small.jsonl", "--out", "ROOT/index", "--model", "ROOT/model", "--no-progress"], root
    )
    assert out.returncode == 0, out.stderr
    out = run(["data", "build", "--out", "ROOT/bench"], root)
    assert out.returncode == 0, out.stderr


def copy_index(root: Path, name: str) -> Path:
    shutil.copytree(root / "index", root / name)
    return root / name


def cases() -> list[Case]:
    m = ["--model", "ROOT/model"]
    idx = ["index", "ROOT/small.jsonl", "--no-progress", *m]

    def index_copy(name: str, damage: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            d = copy_index(root, name)
            if damage:
                damage(d)

        return setup

    def manifest(edit: Callable[[dict], object]) -> Callable[[Path], None]:
        def damage(d: Path) -> None:
            data = json.loads((d / "manifest.json").read_text())
            result = edit(data)
            (d / "manifest.json").write_text(json.dumps(data if result is None else result))

        return damage

    def foreign(name: str, files: dict[str, str]) -> Callable[[Path], None]:
        def setup(root: Path) -> None:
            for rel, text in files.items():
                write(root / name / rel, text)

        return setup

    def faiss_of_dim(d: Path) -> None:
        import faiss

        faiss.write_index(faiss.IndexFlatIP(7), str(d / "vectors.faiss"))

    return [
        # -- index: the corpus
        Case("corpus file missing", ["index", "ROOT/none.jsonl", "--out", "ROOT/o1", *m]),
        Case(
            "corpus empty",
            [*idx[:1], "ROOT/empty.jsonl", "--out", "ROOT/o2", *m],
            lambda r: write(r / "empty.jsonl", ""),
        ),
        Case(
            "corpus JSONL bad line",
            ["index", "ROOT/bad.jsonl", "--out", "ROOT/o3", *m],
            lambda r: write(r / "bad.jsonl", '{"id": "a", "text": "x"}\n{"id": \n'),
        ),
        Case(
            "corpus JSONL without text",
            ["index", "ROOT/notext.jsonl", "--out", "ROOT/o4", *m],
            lambda r: write(r / "notext.jsonl", '{"id": "a", "title": "x"}\n'),
        ),
        Case(
            "corpus TSV with 5 columns",
            ["index", "ROOT/bad.tsv", "--out", "ROOT/o5", *m],
            lambda r: write(r / "bad.tsv", "id\ttext\ttitle\n1\ta\tb\tc\td\n"),
        ),
        Case(
            "corpus of random bytes",
            ["index", "ROOT/bytes.jsonl", "--out", "ROOT/o6", *m],
            lambda r: write(r / "bytes.jsonl", os.urandom(4096)),
        ),
        Case(
            "corpus duplicate ids",
            ["index", "ROOT/dup.jsonl", "--out", "ROOT/o7", *m],
            lambda r: write(r / "dup.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n'),
        ),
        Case(
            "corpus is a folder of nothing",
            ["index", "ROOT/emptydir", "--out", "ROOT/o8", *m],
            lambda r: (r / "emptydir").mkdir(),
        ),
        # -- index: the output folder and options
        Case("--out is a file", [*idx, "--out", "ROOT/afile"], lambda r: write(r / "afile", "x")),
        Case(
            "--out a user folder",
            [*idx, "--out", "ROOT/user1"],
            foreign("user1", {USER_FILE: USER_TEXT}),
            guarded=["user1"],
        ),
        Case(
            "--out a user folder, --overwrite",
            [*idx, "--out", "ROOT/user2", "--overwrite"],
            foreign("user2", {USER_FILE: USER_TEXT, "shards/keep.txt": "mine"}),
            guarded=["user2"],
        ),
        Case(
            "--out with another program's manifest.json, --overwrite",
            [*idx, "--out", "ROOT/app", "--overwrite"],
            foreign("app", {"manifest.json": '{"name": "web app"}', USER_FILE: USER_TEXT}),
            guarded=["app"],
        ),
        Case(
            "--overwrite of an index, unreadable corpus",
            ["index", "ROOT/bad2.jsonl", "--out", "ROOT/i1", "--overwrite", *m],
            lambda r: (write(r / "bad2.jsonl", '{"id": \n'), copy_index(r, "i1")),
        ),
        Case("--baselines unknown", [*idx, "--out", "ROOT/o9", "--baselines", "bm25,foo"]),
        Case("--factory bogus", [*idx, "--out", "ROOT/o10", "--factory", "Bogus99"]),
        Case("--factory IDMap", [*idx, "--out", "ROOT/o11", "--factory", "IDMap,Flat"]),
        Case("--shard-size 0", [*idx, "--out", "ROOT/o12", "--shard-size", "0"]),
        Case("--batch-size -1", [*idx, "--out", "ROOT/o13", "--batch-size", "-1"]),
        Case(
            "--model missing", ["index", "ROOT/small.jsonl", "--out", "ROOT/o14", "--model", "ROOT/nomodel"]
        ),
        Case(
            "--model config but no weights",
            ["index", "ROOT/small.jsonl", "--out", "ROOT/o15", "--model", "ROOT/noweights"],
            lambda r: write(r / "noweights" / "config.json", (r / "model" / "config.json").read_text()),
        ),
        Case("--b beyond the layers", [*idx, "--out", "ROOT/o16", "--b", "99"]),
        Case(
            "--retrieval-key trained, last pooling", [*idx, "--out", "ROOT/o17", "--retrieval-key", "trained"]
        ),
        Case("index a complete index again", [*idx, "--out", "ROOT/i2"], index_copy("i2")),
        # -- reading damaged indexes
        Case(
            "retrieve: not an index",
            ["retrieve", "ROOT/user3", "q"],
            foreign("user3", {USER_FILE: USER_TEXT}),
            guarded=["user3"],
        ),
        Case(
            "retrieve: manifest of random bytes",
            ["retrieve", "ROOT/d1", "q"],
            index_copy("d1", lambda d: write(d / "manifest.json", os.urandom(300))),
        ),
        Case(
            "retrieve: manifest model lacks b",
            ["retrieve", "ROOT/d2", "q"],
            index_copy("d2", manifest(lambda j: j["model"].pop("b"))),
        ),
        Case(
            "retrieve: manifest model is a string",
            ["retrieve", "ROOT/d3", "q"],
            index_copy("d3", manifest(lambda j: j.__setitem__("model", "llama"))),
        ),
        Case(
            "retrieve: manifest dim is text",
            ["retrieve", "ROOT/d4", "q"],
            index_copy("d4", manifest(lambda j: j.__setitem__("dim", "64"))),
        ),
        Case(
            "retrieve: vectors of another dimension",
            ["retrieve", "ROOT/d5", "q"],
            index_copy("d5", faiss_of_dim),
        ),
        Case(
            "retrieve: vectors of random bytes",
            ["retrieve", "ROOT/d6", "q"],
            index_copy("d6", lambda d: write(d / "vectors.faiss", os.urandom(999))),
        ),
        Case(
            "retrieve: store of random bytes",
            ["retrieve", "ROOT/d7", "q"],
            index_copy("d7", lambda d: write(d / "passages.sqlite", os.urandom(4096))),
        ),
        Case(
            "retrieve: manifest deleted",
            ["retrieve", "ROOT/d8", "q"],
            index_copy("d8", lambda d: (d / "manifest.json").unlink()),
        ),
        Case(
            "retrieve: vectors deleted",
            ["retrieve", "ROOT/d9", "q"],
            index_copy("d9", lambda d: (d / "vectors.faiss").unlink()),
        ),
        Case("retrieve: another model's index", ["retrieve", "ROOT/index", "q", "--model", "smollm2-135m"]),
        Case("retrieve -k 0", ["retrieve", "ROOT/index", "q", "-k", "0"]),
        Case("retrieve -k beyond the index", ["retrieve", "ROOT/index", "q", "-k", "100000"]),
        Case("retrieve an empty prompt", ["retrieve", "ROOT/index", ""]),
        Case("retrieve --retriever bm25 not built", ["retrieve", "ROOT/index", "q", "--retriever", "bm25"]),
        Case(
            "retrieve: prompts file of bad JSON",
            ["retrieve", "ROOT/index", "--prompts-file", "ROOT/p.jsonl"],
            lambda r: write(r / "p.jsonl", '{"prompt": \n'),
        ),
        Case("ask: index missing", ["ask", "ROOT/nope", "q"]),
        # -- update
        Case(
            "update --add missing file", ["update", "ROOT/u1", "--add", "ROOT/none.jsonl"], index_copy("u1")
        ),
        Case(
            "update --add bad line",
            ["update", "ROOT/u2", "--add", "ROOT/bad3.jsonl"],
            lambda r: (copy_index(r, "u2"), write(r / "bad3.jsonl", '{"id": "z", "text": "ok"}\n{"id": \n')),
        ),
        Case(
            "update --delete unknown id",
            ["update", "ROOT/u3", "--delete", "no-such-id"],
            index_copy("u3"),
        ),
        Case("update with neither --add nor --delete", ["update", "ROOT/u4"], index_copy("u4")),
        # -- train
        Case("train: config file missing", ["train", "--config", "ROOT/none.yaml", "--out", "ROOT/t1"]),
        Case(
            "train: config not YAML",
            ["train", "--config", "ROOT/bad.yaml", "--out", "ROOT/t2"],
            lambda r: write(r / "bad.yaml", "model: [unclosed\n"),
        ),
        Case("train: unknown key", ["train", "--out", "ROOT/t3", "optim.lrr=1"]),
        Case("train: lr .inf", ["train", "--out", "ROOT/t4", "optim.lr=.inf"]),
        Case("train: lr negative", ["train", "--out", "ROOT/t5", "optim.lr=-1"]),
        Case("train: lr a string", ["train", "--out", "ROOT/t6", "optim.lr=fast"]),
        Case(
            "train: benchmark missing",
            ["train", "--out", "ROOT/t7", "data.benchmark=ROOT/nobench", "data.index=ROOT/index"],
        ),
        Case("train: --out is a file", ["train", "--out", "ROOT/afile2"], lambda r: write(r / "afile2", "x")),
        Case(
            "train: --out a user folder",
            ["train", "--out", "ROOT/user4", "data.benchmark=B"],
            foreign("user4", {"log.jsonl": USER_TEXT, USER_FILE: USER_TEXT}),
            guarded=["user4"],
        ),
        # -- data, eval, calibrate, info
        Case(
            "data build --out a user folder --overwrite",
            ["data", "build", "--out", "ROOT/user5", "--overwrite"],
            foreign("user5", {USER_FILE: USER_TEXT, "benchmark.json": "{}"}),
            guarded=["user5"],
        ),
        Case(
            "data build --out a file",
            ["data", "build", "--out", "ROOT/afile3"],
            lambda r: write(r / "afile3", "x"),
        ),
        Case(
            "eval: benchmark missing",
            [
                "eval",
                "--data",
                "ROOT/nobench",
                "--index",
                "ROOT/index",
                "--system",
                "closed-book",
                "--out",
                "ROOT/e1",
                *m,
            ],
        ),
        Case(
            "eval: benchmark.json random bytes",
            [
                "eval",
                "--data",
                "ROOT/b1",
                "--index",
                "ROOT/index",
                "--system",
                "closed-book",
                "--out",
                "ROOT/e2",
                *m,
            ],
            lambda r: write(r / "b1" / "benchmark.json", os.urandom(200)),
        ),
        Case(
            "eval: --out a user folder",
            ["eval", "--data", "ROOT/bench", "--system", "closed-book", "--out", "ROOT/user6", *m],
            foreign("user6", {USER_FILE: USER_TEXT, "results.md": "mine"}),
            guarded=["user6"],
        ),
        Case(
            "calibrate: prompts missing", ["calibrate", *m, "--prompts", "ROOT/none.txt", "--out", "ROOT/c1"]
        ),
        Case(
            "calibrate: --out a user folder",
            ["calibrate", *m, "--prompts", "ROOT/prompts.txt", "--out", "ROOT/user7"],
            foreign("user7", {USER_FILE: USER_TEXT}),
            guarded=["user7"],
        ),
        Case("info: model missing", ["info", "--model", "ROOT/nomodel"]),
        Case("info: the tiny model", ["info", *m], legal=True),
    ]


def classify(case: Case, out: subprocess.CompletedProcess) -> str:
    err = out.stderr.strip()
    if "Traceback" in out.stderr or out.returncode not in (0, 2):
        return "traceback"
    if case.legal:
        return "ok" if out.returncode == 0 else "refused a legal input"
    if out.returncode == 0:
        return "accepted silently"
    lines = [line for line in err.splitlines() if line.strip() and not _noise(line)]
    return "clear error" if len(lines) == 1 and "error" in lines[0] else "several lines"


def _noise(line: str) -> bool:
    """Progress bars (tqdm's "N/s]"), info logs ("imprag: dtype auto -> ...") and library debug lines."""
    return "/s]" in line or line.startswith(("imprag: ", "DEBUG", "Loading weights", "Writing model"))


def bad_inputs(root: Path) -> dict:
    results, lost = [], []
    for case in cases():
        case.setup(root)
        for folder in case.guarded:
            assert (root / folder / USER_FILE).is_file(), case.name
        out = run(case.argv, root)
        verdict = classify(case, out)
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        results.append({"case": case.name, "exit": out.returncode, "verdict": verdict, "stderr": last[:300]})
        print(f"  {verdict:<22} {case.name}: {last[:140]}", flush=True)
        for folder in case.guarded:
            f = root / folder / USER_FILE
            if not f.is_file() or f.read_text() != USER_TEXT:
                lost.append(f"{case.name}: {f}")
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return {"cases": len(results), "counts": counts, "data_lost": lost, "results": results}


def vectors(directory: Path):
    import faiss
    import numpy as np

    index = faiss.read_index(str(directory / "vectors.faiss"))  # IDMap2 over Flat: ids are store rows
    ids = faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    order = np.argsort(ids)
    return ids[order], faiss.downcast_index(index).index.reconstruct_n(0, index.ntotal)[order]


def kills(root: Path, count: int, seed: int) -> dict:
    import numpy as np

    argv = ["index", "ROOT/corpus.jsonl", "--model", "ROOT/model", "--shard-size", "128", "--no-progress"]
    start = time.perf_counter()
    began = _popen([*argv, "--out", "ROOT/k-ref"], root)
    started = _wait_for(root / "k-ref" / "build.json", began) - start  # start-up: imports, model load
    assert began.wait() == 0, "the reference build failed"
    seconds = time.perf_counter() - start
    ref_ids, ref_vectors = vectors(root / "k-ref")
    rng, trials = random.Random(seed), []
    for i in range(count):
        out = root / f"k{i}"
        # within the build itself (its build.json written, passages being stored or encoded), not start-up
        after = rng.uniform(0.05, 0.95) * max(0.1, seconds - started)
        launched = time.perf_counter()
        proc = _popen([*argv, "--out", f"ROOT/k{i}"], root)
        _wait_for(out / "build.json", proc)
        time.sleep(after)
        at = time.perf_counter() - launched
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = sorted(p.name for p in out.iterdir()) if out.exists() else []
        again = run([*argv, "--out", f"ROOT/k{i}"], root)
        # killed after its manifest landed (the build was done): the same command says so, and the index
        # it left is what gets compared
        done = again.returncode == 2 and "already holds a complete index" in again.stderr
        ok = again.returncode == 0 or done
        ids, vecs = vectors(out) if ok else (None, None)
        same = ok and np.array_equal(ids, ref_ids) and np.array_equal(vecs, ref_vectors)
        same = (
            same
            and (out / "passages.sqlite").read_bytes() == (root / "k-ref" / "passages.sqlite").read_bytes()
        )
        trials.append(
            {
                "kill_at_s": round(at, 2),
                "into_build_s": round(after, 2),
                "killed": killed,
                "left": state,
                "resumed_identical": bool(same),
                "stderr": again.stderr.strip().splitlines()[-1:] if again.returncode else [],
            }
        )
        print(
            f"  kill -9 at {at:.1f} s, {after:.1f} s into the build (killed: {killed}, left {state}): "
            f"resumed identical {same}",
            flush=True,
        )
    return {
        "reference_seconds": round(seconds, 1),
        "reference_startup_seconds": round(started, 1),
        "trials": trials,
        "resumed_identical": sum(t["resumed_identical"] for t in trials),
    }


def _popen(argv: list[str], root: Path) -> subprocess.Popen:
    argv = [a.replace("ROOT", str(root)) for a in argv]
    return subprocess.Popen([IMPRAG, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)


def _wait_for(path: Path, proc: subprocess.Popen) -> float:
    """Poll until `path` exists (or the process ended); the perf_counter time it appeared."""
    while not path.exists() and proc.poll() is None:
        time.sleep(0.02)
    return time.perf_counter()


def consistent(directory: Path, added: list[str]) -> bool:
    """As many vectors as stored passages, and every passage reported added is there with a vector."""
    import sqlite3

    ids, _ = vectors(directory)
    with sqlite3.connect(directory / "passages.sqlite") as db:
        rows = dict(db.execute("SELECT pid, row FROM passages").fetchall())
    return len(ids) == len(rows) and all(pid in rows and rows[pid] in set(ids.tolist()) for pid in added)


def concurrent(root: Path, trials: int) -> dict:
    results = []
    for i in range(trials):
        target = copy_index(root, f"c{i}")
        procs = [
            subprocess.Popen(
                [IMPRAG, "update", str(target), "--add", str(root / f"add-{x}.jsonl")],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for x in "ab"
        ]
        outs = [p.communicate() for p in procs]
        codes = [p.returncode for p in procs]
        added = []
        for x, (stdout, _), code in zip("ab", outs, codes, strict=True):
            if code == 0 and "added" in stdout:
                added += [
                    json.loads(line)["id"] for line in (root / f"add-{x}.jsonl").read_text().splitlines()
                ]
        locked = sum("being written by another imprag process" in err for _, err in outs)
        ok = all(
            c == 0
            or ("being written" in e and len([x for x in e.splitlines() if x.strip() and not _noise(x)]) == 1)
            for c, (_, e) in zip(codes, outs, strict=True)
        )
        results.append(
            {
                "kind": "update+update",
                "exit": codes,
                "locked": locked,
                "consistent": ok and consistent(target, added),
            }
        )
        print(
            f"  two updates: exits {codes}, refused by the lock {locked}, "
            f"consistent {results[-1]['consistent']}"
        )
    for i in range(trials):
        argv = [
            "index",
            str(root / "small.jsonl"),
            "--out",
            str(root / f"n{i}"),
            "--model",
            str(root / "model"),
            "--no-progress",
        ]
        procs = [
            subprocess.Popen(
                [IMPRAG, *argv], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outs = [p.communicate() for p in procs]
        codes = [p.returncode for p in procs]
        fine = all(
            c == 0 or "being written" in e or "already holds a complete index" in e
            for c, (_, e) in zip(codes, outs, strict=True)
        )
        good = fine and consistent(root / f"n{i}", [])
        results.append({"kind": "index+index", "exit": codes, "consistent": good})
        print(f"  two builds: exits {codes}, consistent {good}")
    return {"trials": results, "consistent": sum(r["consistent"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--passages", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text

    root = Path(tempfile.mkdtemp(prefix="imprag-probe-"))
    try:
        print(f"fixtures in {root}", flush=True)
        fixtures(root, args.passages)
        print("bad inputs:", flush=True)
        bad = bad_inputs(root)
        print("kill -9 during index builds:", flush=True)
        killed = kills(root, args.kills, args.seed)
        print("concurrent writers:", flush=True)
        both = concurrent(root, args.concurrent)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {
        "cases": bad["cases"],
        "clear_errors_or_accepted_legal": bad["counts"].get("clear error", 0) + bad["counts"].get("ok", 0),
        "tracebacks": bad["counts"].get("traceback", 0),
        "other": {k: v for k, v in bad["counts"].items() if k not in ("clear error", "ok", "traceback")},
        "data_lost": len(bad["data_lost"]),
        "kill_points": len(killed["trials"]),
        "kill_points_resumed_identically": killed["resumed_identical"],
        "concurrent_trials": len(both["trials"]),
        "concurrent_consistent": both["consistent"],
    }
    result = {
        "machine": describe_machine(),
        "summary": summary,
        "bad_inputs": bad,
        "kills": killed,
        "concurrent": both,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print("\n| probe | count |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
