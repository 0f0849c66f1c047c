"""Is the frozen passage space the limit? A strong query encoder mapped onto the base model's E_p.

With frozen passages every E_p is the base model's (mean-pooled layer-b keys), so whatever the query side
learns, recall is bounded by what that space can tell apart. This probe takes a query encoder far stronger
than layers 0..b of a 135M model, all-MiniLM-L6-v2 (the run's teacher: 0.85 describe dev recall@10 over the
corpus in its own space, as this probe measures it), and trains a full-rank linear map (plus a bias) from its
prompt embedding onto the E_p space with the recipe's whole-corpus multi-label NCE (gold positives, 64 queries
a step, Adam 3e-3, tau 0.25), then measures recall@10 of each task's dev split over the whole corpus against
the index's exact E_p. The same map onto MiniLM's own passage space is the yardstick: if it recovers MiniLM's
recall while the map onto E_p stays far below, the frozen passage space, not the query side, is what caps
recall.

`--layers 3,7,11,15` adds the frozen passage spaces of other layers b (the base model's mean-pooled pre-RoPE
layer-b keys, computed by the model's own backbone in one pass up to the largest b; layer 7's is checked
against the index's vectors): where the map recovers most, a frozen index at that layer has the most room.

Run:  .venv/bin/python benchmarks/probe_passage_space.py --index INDEX \
          [--train-tasks describe,about,sentence] [--dev-tasks describe,slot-filling,...] [--layers 3,11,15]
      (INDEX: built by the base model with mean pooling and --baselines minilm; writes
      benchmarks/results/probe_passage_space.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from probe_query_rank import gold_columns, recall_at_10

RESULTS = Path(__file__).parent / "results" / "probe_passage_space.json"


def main() -> None:
    import numpy as np
    import torch

    from imprag import ImpRAG
    from imprag.data.benchmark import Benchmark
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text
    from imprag.retrieval.baselines import baseline_dir, load_baseline
    from imprag.retrieval.index import PassageIndex
    from imprag.training.losses import multi_label_nce

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", required=True, help="index built by the base model (mean pooling)")
    parser.add_argument("--data", default="data/benchmark", help="benchmark directory")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-tasks", default="describe,about,sentence")
    parser.add_argument("--dev-tasks", default="describe,slot-filling,fact-check,entity-linking")
    parser.add_argument("--layers", default="", help="comma-separated layers b whose E_p space is probed too")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = ImpRAG.from_pretrained("smollm2-135m")
    model.config = replace(model.config, embedding=replace(model.config.embedding, pooling="mean"))
    index = PassageIndex.load(args.index, model)  # stale unless the base model built it with mean pooling
    rows, e_p = index.vectors()
    column = {int(r): i for i, r in enumerate(rows)}
    bench, store = Benchmark.load(args.data), index.store
    minilm = load_baseline("minilm", baseline_dir(Path(args.index), "minilm"), store)
    texts = [p.content for p in store.get(rows.tolist())]
    spaces = {  # passage vectors in column order: the frozen E_p, and MiniLM's own (the yardstick)
        f"E_p layer {model.split.b} (the index)": e_p.float(),
        "MiniLM passages": torch.from_numpy(np.asarray(minilm.encode(texts))),
    }
    layers = sorted({int(x) for x in args.layers.split(",") if x})
    if layers:
        by_layer = passage_spaces(model, texts, sorted({*layers, model.split.b}))
        check = torch.nn.functional.cosine_similarity(by_layer[model.split.b], e_p.float(), dim=1)
        print(f"layer {model.split.b} recomputed against the index: cosine min {check.min():.4f}")
        spaces |= {f"E_p layer {b}": by_layer[b] for b in layers if b != model.split.b}

    def queries(items: list) -> torch.Tensor:
        return torch.from_numpy(np.asarray(minilm.encode([it.prompt for it in items]))).float()

    train = [it for task in args.train_tasks.split(",") for it in bench.items(task, "train")]
    x_train, gold_train = queries(train), gold_columns(store, column, train)
    dev = {task: bench.items(task, "dev") for task in args.dev_tasks.split(",")}
    x_dev = {task: queries(items) for task, items in dev.items()}
    gold_dev = {task: gold_columns(store, column, items) for task, items in dev.items()}

    def recall(passages: torch.Tensor, w: torch.Tensor | None, bias: torch.Tensor | None) -> dict[str, float]:
        mapped = x_dev if w is None else {t: x @ w.T + bias for t, x in x_dev.items()}
        return recall_at_10(mapped, gold_dev, passages)

    result = {
        "machine": describe_machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train": len(train),
        "dev": {task: len(items) for task, items in dev.items()},
        "minilm_itself": recall(spaces["MiniLM passages"], None, None),
        "curves": {},
    }
    print(f"MiniLM in its own space (no map): dev recall@10 {result['minilm_itself']}")
    for name, passages in spaces.items():
        w = torch.zeros(passages.shape[1], x_train.shape[1], requires_grad=True)
        torch.nn.init.normal_(w, std=x_train.shape[1] ** -0.5)
        bias = torch.zeros(passages.shape[1], requires_grad=True)
        optimizer = torch.optim.Adam([w, bias], lr=3e-3)
        curve = []
        for step in range(args.steps + 1):
            if step % 100 == 0:
                with torch.no_grad():
                    curve.append({"step": step, "recall": recall(passages, w, bias)})
                print(f"map onto {name}: step {step} dev recall@10 {curve[-1]['recall']}", flush=True)
            if step == args.steps:
                break
            pick = torch.randint(0, len(x_train), (64,)).tolist()
            scores = (x_train[pick] @ w.T + bias) @ passages.T
            positives = torch.zeros_like(scores, dtype=torch.bool)
            for i, j in enumerate(pick):
                positives[i, gold_train[j]] = True
            loss = multi_label_nce(scores, positives, torch.ones_like(positives), temperature=0.25)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["curves"][name] = curve
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def passage_spaces(model, texts: list[str], layers: list[int]) -> dict:
    """E_p of `texts` at each layer b of `layers` (mean-pooled pre-RoPE keys, as `embed_passages` reads them
    at layer b), in one pass of the backbone up to the largest."""
    import torch

    from imprag.model.embeddings import passage_embedding
    from imprag.model.reader import batch_tokens

    bb, ids = model.backbone, model.passage_tokens(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = {b: torch.empty(len(ids), model.dim) for b in layers}
    with torch.no_grad():
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            batch = batch_tokens([ids[i] for i in rows], [0] * len(rows), model.pad_id).to(bb.device)
            h = bb.embed(batch.input_ids)
            step, done = bb.step(h, batch.positions, batch.valid), 0
            for b in layers:
                h, done = bb.run(h, range(done, b), step), b
                e_p = passage_embedding(bb.project(b, h, step), batch.valid, model.config.embedding)
                out[b][torch.tensor(rows)] = e_p.float().cpu()
    return out


if __name__ == "__main__":
    main()
