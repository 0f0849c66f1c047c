"""How much rank does the query side need? A linear probe on frozen layer-b inputs.

With frozen passages (`model.passages=frozen`) every E_p is fixed, so retrieval training can only move E_q.
The last map onto E_q is layer b's query projection: E_q = G(W_q) x_bar, x_bar the mean over prompt tokens of
layer b's normed input and G the GQA group mean. This probe keeps layers 0..b-1 frozen (their output x_bar is
computed once per prompt) and trains only an update of that map, W = G(W_q) + delta plus a bias (the
centering), with the whole-corpus multi-label NCE against the base index's exact E_p (describe's train
split, 64 queries a step, Adam lr 3e-3, tau 0.25; the positives are the gold article, or with `--labels
DIR/describe-train.jsonl` also the teacher's top 5 from a run's pseudo-label cache, as the recipe trains,
a gold article never a negative), then measures describe dev recall@10 over the whole corpus. delta is
rank-r (B A, B = 0 at the start, as LoRA) for each `--ranks` value, or full (a dense matrix, 0 at first).

It answers two questions: whether the recipe's LoRA rank 8 on q_proj limits what the query side can learn
from the base model's features (the recipe also adapts layers 0..b-1, which this probe does not), and
what training on the teacher's positives costs against the gold article.

Run:  .venv/bin/python benchmarks/probe_query_rank.py --index INDEX [--steps 300] [--ranks 8,64,full] \
          [--labels RUN/pseudo-labels/minilm-HASH/describe-train.jsonl]
      (INDEX: built by the base model with mean pooling; writes benchmarks/results/probe_query_rank.json)
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "probe_query_rank.json"


def main() -> None:
    import torch
    import torch.nn.functional as F

    from imprag import ImpRAG
    from imprag.data.benchmark import Benchmark
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text
    from imprag.retrieval.index import PassageIndex
    from imprag.training.losses import multi_label_nce

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", required=True, help="index built by the base model (mean pooling)")
    parser.add_argument("--data", default="data/benchmark", help="benchmark directory")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ranks", default="8,64,full", help="comma-separated ranks of delta, or full")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labels", help="a pseudo-label cache file (describe-train.jsonl): train on it too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = ImpRAG.from_pretrained("smollm2-135m")
    embedding = replace(model.config.embedding, pooling="mean")  # x_bar is a mean over tokens
    model.config = replace(model.config, embedding=embedding)
    index = PassageIndex.load(args.index, model)  # stale unless the base model built it with mean pooling
    rows, e_p = index.vectors()
    column = {int(r): i for i, r in enumerate(rows)}
    bench, store = Benchmark.load(args.data), index.store
    hf, b = model.model, model.split.b
    layer = hf.model.layers[b]
    hf.model.layers = hf.model.layers[: b + 1]  # nothing above layer b is needed
    tokenizer = model.tokenizer
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    @torch.no_grad()
    def features(prompts: list[str]) -> torch.Tensor:
        """x_bar: layer b's normed input, mean over each prompt's tokens, (n, hidden)."""
        out = []
        for i in range(0, len(prompts), 64):
            enc = tokenizer(prompts[i : i + 64], return_tensors="pt", padding=True)
            hidden = hf.model(**enc, output_hidden_states=True).hidden_states[b]  # the input to layer b
            x = layer.input_layernorm(hidden).float()
            w = enc["attention_mask"].float()[..., None]
            out.append((x * w).sum(1) / w.sum(1))
        return torch.cat(out)

    train, dev = bench.items("describe", "train"), bench.items("describe", "dev")
    x_train, x_dev = features([it.prompt for it in train]), features([it.prompt for it in dev])
    gold_train = torch.tensor([column[store.rows_of(it.evidence)[0]] for it in train])
    positives_of = {"gold": [[int(g)] for g in gold_train]}
    if args.labels:
        lines = Path(args.labels).read_text().splitlines()
        labels = {r["id"]: r["positives"] for r in map(json.loads, lines)}
        positives_of["teacher"] = [
            [column[r] for r in store.rows_of(labels[it.id]) if r is not None] for it in train
        ]
    gold_dev = [column[store.rows_of(it.evidence)[0]] for it in dev]
    w_q = layer.self_attn.q_proj.weight.detach().float()
    heads, groups = hf.config.num_attention_heads, hf.config.num_key_value_heads
    head_dim = w_q.shape[0] // heads
    base = w_q.view(groups, heads // groups, head_dim, -1).mean(1).reshape(groups * head_dim, -1)
    center = -(x_train @ base.T).mean(0)

    def recall(w: torch.Tensor, bias: torch.Tensor) -> float:
        top = ((x_dev @ w.T + bias) @ e_p.T).topk(10, dim=1).indices.tolist()
        return round(sum(g in t for g, t in zip(gold_dev, top, strict=True)) / len(gold_dev), 3)

    result = {
        "machine": describe_machine(),
        "settings": vars(args),
        "train": len(train),
        "dev": len(dev),
        "corpus": len(rows),
        "base_centered": recall(base, center),
        "curves": {},
    }
    print(f"base q_proj, centered: dev recall@10 {result['base_centered']}")
    for labels_name, rank in [(lab, r) for lab in positives_of for r in args.ranks.split(",")]:
        if rank == "full":
            params = [torch.zeros_like(base, requires_grad=True)]
        else:
            params = [
                torch.zeros(base.shape[0], int(rank), requires_grad=True),  # B
                torch.empty(int(rank), base.shape[1]).normal_(0, 0.01).requires_grad_(),  # A
            ]

        def weight(params: list[torch.Tensor] = params) -> torch.Tensor:
            return base + (params[0] if len(params) == 1 else params[0] @ params[1])

        bias = center.clone().requires_grad_()
        optimizer = torch.optim.Adam([*params, bias], lr=3e-3)
        curve = []
        for step in range(args.steps + 1):
            if step % 100 == 0:
                with torch.no_grad():
                    curve.append({"step": step, "recall": recall(weight(), bias)})
                recall_now = curve[-1]["recall"]
                print(f"{labels_name} rank {rank}: step {step} dev recall@10 {recall_now}", flush=True)
            if step == args.steps:
                break
            pick = torch.randint(0, len(x_train), (64,))
            scores = (x_train[pick] @ weight().T + bias) @ e_p.T
            positives = torch.zeros_like(scores, dtype=torch.bool)
            for i, j in enumerate(pick.tolist()):
                positives[i, positives_of[labels_name][j]] = True
            gold = F.one_hot(gold_train[pick], len(rows)).bool()
            loss = multi_label_nce(scores, positives, positives | ~gold, temperature=0.25)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["curves"][f"{labels_name}/{rank}"] = curve
    steps = [c["step"] for c in next(iter(result["curves"].values()))]
    print("\npositives/rank " + "  ".join(f"step {s:>3}" for s in steps))
    for name, curve in result["curves"].items():
        print(f"{name:<14} " + "  ".join(f"{c['recall']:>8.3f}" for c in curve))
    atomic_write_text(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
