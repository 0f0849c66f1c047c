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

Two more settings make it a probe of the query's pooling and of the training tasks: `--pooling mean,last`
also pools the query side at the prompt's last token (x_last instead of x_bar; E_p stays mean-pooled, the
index's), and `--train-tasks describe describe,about,sentence` trains one map per set of retrieval tasks
(gold positives; `--labels` applies to describe alone). `--dev-tasks` measures recall@10 of each task's dev
split over the whole corpus: a map trained on seen formats, read on unseen ones, says how far the query
side generalises.

`--key-map` trains the passage side too, as `model.retrieval_key=trained` does: layer b's key projection
(starting at the base weights) over the base model's frozen mean-pooled layer-b passage inputs f_p, scored as
(W x + bias) . W_ret f_p; each setting is then trained twice, with the frozen E_p and with W_ret.

Run:  .venv/bin/python benchmarks/probe_query_rank.py --index INDEX [--steps 300] [--ranks 8,64,full] \
          [--labels RUN/pseudo-labels/minilm-HASH/describe-train.jsonl] [--pooling mean,last] \
          [--train-tasks describe describe,about,sentence] [--dev-tasks describe,slot-filling,...] [--out F]
      (INDEX: built by the base model with mean pooling; writes benchmarks/results/probe_query_rank.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results" / "probe_query_rank.json"


def main() -> None:
    import torch

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
    parser.add_argument("--pooling", default="mean", help="query-side pooling(s): mean, last or mean,last")
    parser.add_argument(
        "--train-tasks", nargs="+", default=["describe"], help="retrieval task sets, each comma-separated"
    )
    parser.add_argument(
        "--dev-tasks", default="describe", help="comma-separated tasks whose dev recall is measured"
    )
    parser.add_argument(
        "--key-map", action="store_true", help="also train W_ret over the frozen layer-b passage inputs"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
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
    f_p = None
    if args.key_map:  # before the layers above b are cut off: the base model's f_p of every passage
        sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
        from probe_passage_space import passage_features

        f_p = passage_features(model, [p.content for p in store.get(rows.tolist())])
        w_k = layer.self_attn.k_proj.weight.detach().float()
        check = torch.nn.functional.cosine_similarity(f_p @ w_k.T, e_p.float(), dim=1).min()
        print(f"W_k f_p against the index's E_p: cosine min {check:.4f}")
    hf.model.layers = hf.model.layers[: b + 1]  # nothing above layer b is needed
    tokenizer = model.tokenizer
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    @torch.no_grad()
    def features(prompts: list[str]) -> dict[str, torch.Tensor]:
        """Layer b's normed input pooled over each prompt: x_bar (the mean) and x_last, each (n, hidden)."""
        out: dict[str, list[torch.Tensor]] = {"mean": [], "last": []}
        for i in range(0, len(prompts), 64):
            enc = tokenizer(prompts[i : i + 64], return_tensors="pt", padding=True)
            hidden = hf.model(**enc, output_hidden_states=True).hidden_states[b]  # the input to layer b
            x = layer.input_layernorm(hidden).float()
            w = enc["attention_mask"].float()[..., None]
            out["mean"].append((x * w).sum(1) / w.sum(1))
            last = enc["attention_mask"].sum(1) - 1  # right padding: the last real token
            out["last"].append(x[torch.arange(len(x)), last])
        return {name: torch.cat(parts) for name, parts in out.items()}

    dev_tasks = args.dev_tasks.split(",")
    dev = {task: bench.items(task, "dev") for task in dev_tasks}
    x_dev = {task: features([it.prompt for it in items]) for task, items in dev.items()}
    gold_dev = {task: gold_columns(store, column, items) for task, items in dev.items()}
    w_q = layer.self_attn.q_proj.weight.detach().float()
    heads, groups = hf.config.num_attention_heads, hf.config.num_key_value_heads
    head_dim = w_q.shape[0] // heads
    base = w_q.view(groups, heads // groups, head_dim, -1).mean(1).reshape(groups * head_dim, -1)

    def recall(pooling: str, w: torch.Tensor, bias: torch.Tensor, passages=None) -> dict[str, float]:
        mapped = {t: x[pooling] @ w.T + bias for t, x in x_dev.items()}
        return recall_at_10(mapped, gold_dev, e_p if passages is None else passages)

    result = {
        "machine": describe_machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "dev": {task: len(items) for task, items in dev.items()},
        "corpus": len(rows),
        "train": {},
        "base_centered": {},
        "curves": {},
    }
    settings = []
    for tasks in args.train_tasks:
        train = [it for task in tasks.split(",") for it in bench.items(task, "train")]
        result["train"][tasks] = len(train)
        x_train = features([it.prompt for it in train])
        gold_train = gold_columns(store, column, train)
        positives_of = {"gold": gold_train}
        if args.labels and tasks == "describe":
            lines = Path(args.labels).read_text().splitlines()
            labels = {r["id"]: r["positives"] for r in map(json.loads, lines)}
            positives_of["teacher"] = [
                [column[r] for r in store.rows_of(labels[it.id]) if r is not None] for it in train
            ]
        for pooling in args.pooling.split(","):
            center = -(x_train[pooling] @ base.T).mean(0)
            key = f"{pooling}/{tasks}"
            result["base_centered"][key] = recall(pooling, base, center)
            print(f"base q_proj, centered, {key}: dev recall@10 {result['base_centered'][key]}")
            for labels_name in positives_of:
                chosen = positives_of[labels_name]
                settings += [
                    (pooling, tasks, x_train[pooling], gold_train, chosen, labels_name, r, center, keyed)
                    for r in args.ranks.split(",")
                    for keyed in ([False, True] if args.key_map else [False])
                ]
    for pooling, tasks, x_train, gold_train, positives, labels_name, rank, center, keyed in settings:
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
        key = w_k.clone().requires_grad_() if keyed else None
        optimizer = torch.optim.Adam([*params, bias] + ([key] if keyed else []), lr=3e-3)
        name = f"{pooling}/{tasks}/{labels_name}/{rank}" + ("/W_ret" if keyed else "")
        curve = []
        for step in range(args.steps + 1):
            passages = e_p if key is None else f_p @ key.T
            if step % 100 == 0:
                with torch.no_grad():
                    curve.append({"step": step, "recall": recall(pooling, weight(), bias, passages)})
                print(f"{name}: step {step} dev recall@10 {curve[-1]['recall']}", flush=True)
            if step == args.steps:
                break
            pick = torch.randint(0, len(x_train), (64,)).tolist()
            scores = (x_train[pick] @ weight().T + bias) @ passages.T
            is_positive = torch.zeros_like(scores, dtype=torch.bool)
            gold = torch.zeros_like(scores, dtype=torch.bool)
            for i, j in enumerate(pick):
                is_positive[i, positives[j]] = True
                gold[i, gold_train[j]] = True
            loss = multi_label_nce(scores, is_positive, is_positive | ~gold, temperature=0.25)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["curves"][name] = curve
    print("\ndev recall@10 at the last step, per task")
    print(f"{'pooling/tasks/positives/rank':<44} " + " ".join(f"{t:>14}" for t in dev_tasks))
    for name, curve in result["curves"].items():
        print(f"{name:<44} " + " ".join(f"{curve[-1]['recall'][t]:>14.3f}" for t in dev_tasks))
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def gold_columns(store, column: dict[int, int], items: list) -> list[list[int]]:
    """Each item's gold articles as columns of the corpus vectors (`column`: store row -> column)."""
    return [[column[r] for r in store.rows_of(list(it.evidence)) if r is not None] for it in items]


def gold_nce(scores, golds: list[list[int]], temperature: float = 0.25):
    """The whole-corpus multi-label NCE of scores (m, N) with each row's gold columns `golds[i]` as its
    positives (every other column a negative), as the probes train."""
    import torch

    from imprag.training.losses import multi_label_nce

    positives = torch.zeros_like(scores, dtype=torch.bool)
    for i, cols in enumerate(golds):
        positives[i, cols] = True
    return multi_label_nce(scores, positives, torch.ones_like(positives), temperature=temperature)


def recall_at_10(queries: dict, golds: dict[str, list[list[int]]], passages) -> dict[str, float]:
    """Per task: the share of queries (n, D) with a gold column among their top 10 of `passages` (N, D)."""
    out = {}
    for task, rows in golds.items():
        top = (queries[task] @ passages.T).topk(10, dim=1).indices.tolist()
        out[task] = round(sum(bool(set(g) & set(t)) for g, t in zip(rows, top, strict=True)) / len(rows), 3)
    return out


if __name__ == "__main__":
    main()
