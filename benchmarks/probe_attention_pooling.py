"""Is mean pooling what holds the unseen formats' queries back? A learned pooling over a trained model's
query states.

E_q is the mean over the prompt's tokens of layer b's (GQA-grouped, pre-RoPE) query states. A slot-filling
prompt is "Kenya [SEP] capital" and then 20 words of instruction, so most of what its mean averages is the
instruction; frozen-7 (the adapter committed before frozen-9) finds the gold article for 16% of
slot-filling test prompts and 10% of entity-linking ones against 48% of describe's. This probe keeps a
trained model whole (its adapter, its centering mu_q, its retrieval key W_ret, the base index's f_p) and
trains only the pooling, as attention weights over the prompt's tokens:

    E_q = sum_i a_i q_i,   a = softmax over the prompt's tokens of s_i,   score = (E_q - mu_q) W_ret . f_p

with s_i = u . q_i (`query`: a vector over the query states), s_i = v . x_i (`input`: over layer b's normed
input x_i, the hidden state the query is projected from), or s_i = MLP(x_i) (`mlp`: 256 wide). Each starts
at 0, where the weights are uniform and E_q is exactly the model's mean-pooled E_q (checked against
`embed_queries` before training). Trained with the recipe's whole-corpus multi-label NCE (the gold article
as positive, tau 0.25, 128 queries a step, Adam 1e-2) on the recipe's retrieval tasks (seen formats only);
measured as recall@10 of each dev split over the whole corpus. The query states come from one pass of the
model over every prompt (no gradient), so a setting trains in seconds.

It bounds what a learned pooling could add on top of this adapter (the recipe would train the pooling and
the adapter together; the adapter here was trained for the mean) and says whether it generalises from the
seen formats to the unseen ones, which it never sees.

Run:  .venv/bin/python benchmarks/probe_attention_pooling.py --index INDEX --model M [--steps 600]
          [--save DIR]
      (INDEX: the base model's index with the trained retrieval key's f_p, e.g. `imprag index wiki-summaries
      --out INDEX --pooling mean --retrieval-key trained`; M: a model trained with frozen passages and mean
      pooling, e.g. frozen-7 (`git show 98d3ddd:models/smollm2-135m-imprag/FILE`), or with attention
      pooling and `--scorers input`, whose v it goes on training (a pooling-only stage after the recipe);
      writes benchmarks/results/probe_attention_pooling.json; DIR: a copy of M that pools its query with
      the trained `input` scorer, for `imprag eval`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/ is not a package
from probe_query_rank import gold_columns, gold_nce, recall_at_10

RESULTS = Path(__file__).parent / "results" / "probe_attention_pooling.json"
SCORERS = ("query", "input", "mlp")


def main() -> None:
    import torch

    from imprag import ImpRAG
    from imprag.data.benchmark import Benchmark
    from imprag.hardware import describe_machine
    from imprag.io import atomic_write_text
    from imprag.retrieval.index import PassageIndex

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", required=True, help="the base model's f_p index (trained retrieval key)")
    parser.add_argument(
        "--model", required=True, help="a frozen-passage model with a trained key and mean pooling (a folder)"
    )
    parser.add_argument("--data", default="data/benchmark", help="benchmark directory")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-tasks", default="describe,about,sentence,span-qa")
    parser.add_argument("--dev-tasks", default="describe,slot-filling,fact-check,entity-linking")
    parser.add_argument("--scorers", default=",".join(SCORERS), help=f"comma-separated: {SCORERS}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    parser.add_argument(
        "--save",
        type=Path,
        help="also write the model with the trained 'input' pooling here (a copy of --model with "
        "query_pooling attention and its query_scorer.safetensors), for `imprag eval`",
    )
    args = parser.parse_args()
    scorers = [s for s in args.scorers.split(",") if s]
    if set(scorers) - set(SCORERS):
        raise SystemExit(f"--scorers: unknown {sorted(set(scorers) - set(SCORERS))}; use {SCORERS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = ImpRAG.from_pretrained(args.model)
    if model.retrieval_key is None or model.config.passages != "frozen":
        raise SystemExit(
            f"{args.model}: this probe needs a model trained with frozen passages and a trained key"
        )
    pooling = model.config.embedding.query_side_pooling
    if pooling not in ("mean", "attention") or (pooling == "attention" and scorers != ["input"]):
        raise SystemExit(
            f"{args.model} pools its query with {pooling!r}: this probe trains a pooling on top of a "
            "mean-pooled model (e.g. frozen-7: `git show 98d3ddd:models/smollm2-135m-imprag/FILE` for each "
            "of its files), or goes on training the scorer v of an attention-pooled one (--scorers input)"
        )
    trained = None  # the model's own pooling: the mean, or its scorer v
    if pooling == "attention":
        trained = make_scorer("input", model.dim, model.model.config.hidden_size)
        with torch.no_grad():
            trained.weight.copy_(model.query_scorer.detach().float()[None])
    index = PassageIndex.load(args.index, model)
    rows, f_p = index.vectors()
    f_p = f_p.float()
    column = {int(r): i for i, r in enumerate(rows)}
    bench, store = Benchmark.load(args.data), index.store
    w_ret = model.retrieval_key.detach().float()
    center = model.config.embedding.query_center
    mu = torch.zeros(model.dim) if center is None else torch.tensor(center, dtype=torch.float32)

    train = [it for task in args.train_tasks.split(",") for it in bench.items(task, "train")]
    dev = {task: bench.items(task, "dev") for task in args.dev_tasks.split(",")}
    started = time.perf_counter()
    q_train, x_train = token_states(model, [it.prompt for it in train])
    q_dev, x_dev = {}, {}
    for task, items in dev.items():
        q_dev[task], x_dev[task] = token_states(model, [it.prompt for it in items])
    encode_s = time.perf_counter() - started
    print(
        f"query states of {len(train)} train and {sum(map(len, dev.values()))} dev prompts: {encode_s:.0f} s"
    )
    gold_train = gold_columns(store, column, train)
    gold_dev = {task: gold_columns(store, column, items) for task, items in dev.items()}

    # the model's own pooling of the cached states is its E_q (its searched vector, against the index)
    first = next(iter(dev))
    own = model.index_query(model.embed_queries([it.prompt for it in dev[first][:16]]))
    with torch.no_grad():
        q16, x16 = pad(q_dev[first][:16]), pad(x_dev[first][:16])
        mine = searched(q16, weights(trained, q16, x16), w_ret, mu)
    parity = torch.nn.functional.cosine_similarity(own.float(), mine, dim=1).min().item()
    print(f"{pooling} pooling of the cached states against embed_queries: cosine min {parity:.5f}")
    if parity < 0.999:
        raise SystemExit("the cached query states do not reproduce the model's E_q; the probe is wrong")

    def recall(scorer) -> dict[str, float]:
        with torch.no_grad():
            queries = {
                task: searched(
                    pad(q_dev[task]), weights(scorer, pad(q_dev[task]), pad(x_dev[task])), w_ret, mu
                )
                for task in dev
            }
        return recall_at_10(queries, gold_dev, f_p)

    result = {
        "machine": describe_machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train": len(train),
        "dev": {task: len(items) for task, items in dev.items()},
        "encode_seconds": round(encode_s, 1),
        "parity_cosine_min": round(parity, 6),
        "model_pooling": pooling,
        "as_trained": recall(trained),
        "curves": {},
    }
    print(f"{pooling} pooling (the model as trained): dev recall@10 {result['as_trained']}")
    for name in scorers:
        scorer = make_scorer(name, model.dim, x_train[0].shape[1])
        if trained is not None:  # go on from the model's own v
            scorer.load_state_dict(trained.state_dict())
        optimizer = torch.optim.Adam(scorer.parameters(), lr=1e-2)
        curve = []
        for step in range(args.steps + 1):
            if step % 100 == 0:
                curve.append({"step": step, "recall": recall(scorer)})
                print(f"pooling '{name}': step {step} dev recall@10 {curve[-1]['recall']}", flush=True)
            if step == args.steps:
                break
            pick = torch.randint(0, len(train), (128,)).tolist()
            q, x = pad([q_train[i] for i in pick]), pad([x_train[i] for i in pick])
            scores = searched(q, weights(scorer, q, x), w_ret, mu) @ f_p.T
            loss = gold_nce(scores, [gold_train[j] for j in pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["curves"][name] = curve
        result.setdefault("examples", {})[name] = heaviest_tokens(model, scorer, dev, q_dev, x_dev)
        if name == "input" and args.save:
            save_with_pooling(model, Path(args.model), args.save, scorer.weight.detach()[0])
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def save_with_pooling(model, source: Path, out: Path, scorer) -> None:
    """A copy of the model folder `source` that pools its query with the learned scorer (its mu_q kept:
    the probe trained against it)."""
    import shutil
    from dataclasses import replace

    from imprag.model.query_pooling import QUERY_SCORER_FILE
    from imprag.model.weight_file import save_weight

    if not source.is_dir():
        raise SystemExit(f"--save needs --model to be a folder, got {source}")
    shutil.copytree(source, out, dirs_exist_ok=True)
    embedding = replace(model.config.embedding, query_pooling="attention")
    replace(model.config, embedding=embedding).save(out)
    save_weight(scorer, out, QUERY_SCORER_FILE)
    print(f"wrote {out} (query_pooling attention)")


def token_states(model, prompts: list[str], batch_size: int = 32):
    """Per prompt, under the model's weights (adapter on, no gradient): its (T, G*D) GQA-grouped layer-b
    query states, as E_q pools them (pre- or post-RoPE as the model's config says), and its (T, hidden)
    normed layer-b inputs, with the prompt where `embed_queries` puts it."""
    import torch

    from imprag.model.embeddings import group_queries
    from imprag.model.reader import batch_tokens, tokenize

    bb, b = model.backbone, model.split.b
    ids = tokenize(model.tokenizer, prompts, "prompt")
    offset = model.config.reader.prompt_start(model.config.reader.k)
    queries, inputs = [None] * len(ids), [None] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = batch_tokens([ids[i] for i in rows], [offset] * len(rows), model.pad_id).to(bb.device)
            h = bb.embed(batch.input_ids)
            step = bb.step(h, batch.positions, batch.valid)
            h = bb.run(h, range(0, b), step)
            proj = bb.project(b, h, step)
            q = proj.q_pre if model.config.embedding.rope == "pre" else proj.q
            q = group_queries(q.float(), bb.num_kv_heads)  # (B, G, T, D)
            q = q.permute(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], -1)
            x = bb.layer(b).input_layernorm(h).float()
            for i, row in enumerate(rows):
                keep = batch.valid[i].cpu()
                queries[row], inputs[row] = q[i].cpu()[keep], x[i].cpu()[keep].to(torch.bfloat16)
    return queries, inputs


def pad(states: list):
    """(B, T, C) zero-padded states and their (B, T) validity."""
    import torch

    padded = torch.nn.utils.rnn.pad_sequence([s.float() for s in states], batch_first=True)
    lengths = torch.tensor([len(s) for s in states])
    return padded, torch.arange(padded.shape[1])[None, :] < lengths[:, None]


def make_scorer(name: str, dim: int, hidden: int):
    """The pooling's token scorer, 0 everywhere at the start (uniform weights: mean pooling)."""
    import torch

    if name == "query":
        scorer = torch.nn.Linear(dim, 1, bias=False)
    elif name == "input":
        scorer = torch.nn.Linear(hidden, 1, bias=False)
    else:
        scorer = torch.nn.Sequential(torch.nn.Linear(hidden, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))
    last = scorer if name != "mlp" else scorer[2]
    torch.nn.init.zeros_(last.weight)
    if last.bias is not None:
        torch.nn.init.zeros_(last.bias)
    scorer.kind = name
    return scorer


def weights(scorer, q, x):
    """(B, T) pooling weights over each prompt's valid tokens; None for plain mean pooling."""
    import torch

    if scorer is None:
        return None
    states, valid = q if scorer.kind == "query" else x
    logits = scorer(states).squeeze(-1).masked_fill(~valid, float("-inf"))
    return torch.softmax(logits, dim=1)


def searched(q, a, w_ret, mu):
    """(E_q - mu_q) W_ret for padded states q = (states, valid) pooled with weights a (None: the mean)."""
    states, valid = q
    if a is None:
        a = valid.float() / valid.sum(1, keepdim=True).clamp_min(1)
    return ((a[..., None] * states).sum(1) - mu) @ w_ret


def heaviest_tokens(model, scorer, dev, q_dev, x_dev, n: int = 3) -> dict[str, list]:
    """For the first `n` dev prompts of each task, the 5 tokens the learned pooling weighs most."""
    import torch

    from imprag.model.reader import tokenize

    out = {}
    with torch.no_grad():
        for task, items in dev.items():
            a = weights(scorer, pad(q_dev[task][:n]), pad(x_dev[task][:n]))
            ids = tokenize(model.tokenizer, [it.prompt for it in items[:n]], "prompt")
            out[task] = [
                [
                    (model.tokenizer.decode([ids[i][j]]), round(a[i, j].item(), 3))
                    for j in a[i].topk(5).indices
                ]
                for i in range(len(ids))
            ]
    return out


if __name__ == "__main__":
    main()
