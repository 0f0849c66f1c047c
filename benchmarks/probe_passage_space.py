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

`--title-pooling` adds two other frozen passage spaces of layer b: its keys pooled over the passage's title
line only, and that added to the mean over all tokens (one vector; the query's dot product then weighs what
the article is called and what it says). The unseen formats name their article; a mean over a 100-word
passage may dilute the name.

`--key-map` trains the passage side too, as far as it can move without re-encoding: layer b's key projection
(576 -> 192 for SmolLM2, starting at the base weights, so step 0 is the frozen E_p) applied to the base
model's frozen mean-pooled layer-b inputs (mean pooling commutes with a linear map without bias). If this
map recovers much more than the frozen E_p, a passage side that trains only layer b's k_proj keeps exact
whole-corpus negatives at the cost of one (N, 576) x (576, 192) matmul per step.

`--key-sources 15,23,final,mlp,title,lead` asks whether another frozen passage feature gives that trained
key more to work with (each trained as `--key-map` is, against the same MiniLM query map): the mean of the
normalised input of a deeper layer N (an index may store any layer's features: only the prompt's query has
to come from layers 0..b; the key starts at layer N's own k_proj), `final` the mean of the final norm's
output (key from the last layer), `mlp` layer b's features through the key plus a residual two-layer MLP
(1024 wide, its output 0 at the start: is a non-linear map of the same mean richer?), and two second means
concatenated to layer b's (their key block 0 at the start, so step 0 is still the base E_p): `title`, the
token embeddings over the passage's title line (the name, as the unseen formats give it), and `lead`, layer
b's input over the first 32 tokens (the title and the opening sentence).

`--passage-lora STEPS` asks what is past the frozen ceiling: the passage side re-encoded by layers 0..b-1
with a LoRA adapter (rank 8 on every projection, as the recipe's) under the trained key, the MiniLM query
map as above. Each step re-encodes one gold passage per query with gradient (32 queries a step) and scores
it against the rest of the corpus as of the last refresh (ANCE: every `--refresh-every` steps the whole
corpus is re-encoded without gradient, and dev recall is measured on the fresh vectors). The same loop with
the LoRA held at zero (the trained key alone, the same queries and steps) is the row it is compared with:
what a shared-passage stage could add on top of the frozen recipe, at a cost this probe also prints.

Run:  .venv/bin/python benchmarks/probe_passage_space.py --index INDEX \
          [--train-tasks describe,about,sentence] [--dev-tasks describe,slot-filling,...] [--layers 3,11,15]
          [--key-map] [--key-sources 15,23,final,mlp,title,lead] [--passage-lora 300]
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
from probe_query_rank import gold_columns, gold_nce, recall_at_10

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
    parser.add_argument(
        "--title-pooling",
        action="store_true",
        help="also probe layer b's keys pooled over the title line, alone and added to the mean",
    )
    parser.add_argument(
        "--key-map",
        action="store_true",
        help="also train layer b's key projection on the passage side (from its frozen input features)",
    )
    parser.add_argument(
        "--key-sources",
        default="",
        help="other frozen passage features for a trained key: layer numbers, final, mlp, title, lead",
    )
    parser.add_argument(
        "--passage-lora",
        type=int,
        default=0,
        metavar="STEPS",
        help="also train a LoRA on layers 0..b-1 for the passage side (ANCE refresh) for STEPS steps",
    )
    parser.add_argument("--refresh-every", type=int, default=100, help="--passage-lora: ANCE refresh period")
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

    if args.title_pooling:
        titles = [p.title for p in store.get(rows.tolist())]
        title_mean, whole_mean = title_pooled(model, texts, titles)
        check = torch.nn.functional.cosine_similarity(whole_mean, e_p.float(), dim=1)
        print(f"mean pooling recomputed against the index: cosine min {check.min():.4f}")
        spaces |= {
            f"E_p layer {model.split.b}, title tokens": title_mean,
            f"E_p layer {model.split.b}, mean + title mean": whole_mean + title_mean,
        }
    features = {}
    if args.key_map:  # the passage side learns too: layer b's k_proj over frozen mean-pooled inputs
        features = {"trained k_proj over layer-7 features": passage_features(model, texts)}
        start = features_to_e_p(model, next(iter(features.values())))
        check = torch.nn.functional.cosine_similarity(start, e_p.float(), dim=1)
        print(f"k_proj(features) against the index's E_p: cosine min {check.min():.4f}")
        spaces |= {name: None for name in features}
    sources = [x for x in args.key_sources.split(",") if x]
    key_init: dict[str, torch.Tensor] = {}
    mlp: set[str] = set()
    if sources:
        titles = [p.title for p in store.get(rows.tolist())]
        more, key_init, mlp = key_sources(model, texts, titles, sources)
        features |= more
        spaces |= {name: None for name in more}

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
    for name, fixed in spaces.items():
        key, head = None, None
        if fixed is None:  # trained passage side: starts at the frozen E_p (or the source's own key)
            start = key_init.get(name, model.backbone.layer(model.split.b).self_attn.k_proj.weight)
            key = start.detach().float().clone().requires_grad_(True)
        if name in mlp:  # residual: E_p = key f + MLP(f), the MLP's output 0 at the start
            head = torch.nn.Sequential(
                torch.nn.Linear(key.shape[1], 1024), torch.nn.GELU(), torch.nn.Linear(1024, model.dim)
            )
            torch.nn.init.zeros_(head[2].weight)
            torch.nn.init.zeros_(head[2].bias)
        dim = model.dim if fixed is None else fixed.shape[1]
        w = torch.zeros(dim, x_train.shape[1], requires_grad=True)
        torch.nn.init.normal_(w, std=x_train.shape[1] ** -0.5)
        bias = torch.zeros(dim, requires_grad=True)
        trained = [w, bias] + ([key] if key is not None else []) + (list(head.parameters()) if head else [])
        optimizer = torch.optim.Adam(trained, lr=3e-3)
        curve = []
        for step in range(args.steps + 1):
            passages = fixed if key is None else features[name] @ key.T
            if head is not None:
                passages = passages + head(features[name])
            if step % 100 == 0:
                with torch.no_grad():
                    curve.append({"step": step, "recall": recall(passages, w, bias)})
                print(f"map onto {name}: step {step} dev recall@10 {curve[-1]['recall']}", flush=True)
            if step == args.steps:
                break
            pick = torch.randint(0, len(x_train), (64,)).tolist()
            scores = (x_train[pick] @ w.T + bias) @ passages.T
            loss = gold_nce(scores, [gold_train[j] for j in pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        result["curves"][name] = curve
    if args.passage_lora:
        ids = model.passage_tokens(texts)
        for lora in (False, True):
            name = "LoRA on layers 0..b-1 + trained key" if lora else "trained key alone (same loop)"
            result["curves"][name] = passage_lora_curve(
                model, ids, (x_train, gold_train), recall, lora, args.passage_lora, args.refresh_every
            )
            atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def passage_lora_curve(model, ids, train, recall, lora: bool, steps: int, refresh_every: int) -> list[dict]:
    """Train the MiniLM query map, the key and (with `lora`) a rank-8 LoRA on layers 0..b-1 that re-encodes
    the passages (ANCE: one gold passage per query encoded with gradient, the rest of the corpus as of the
    last refresh); returns dev recall@10 on freshly encoded passages at every refresh, with the seconds spent
    training and refreshing so far. Removes the LoRA again when done."""
    import time

    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from imprag.model.reader import batch_tokens

    torch.manual_seed(0)
    x_train, gold_train = train
    bb, b = model.backbone, model.split.b
    norm = bb.layer(b).input_layernorm
    lora_params: list[torch.Tensor] = []
    if lora:
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            layers_to_transform=list(range(b)),
            lora_dropout=0.0,
            bias="none",
        )
        inject_adapter_in_model(config, model.model)
        lora_params = [p for n, p in model.model.named_parameters() if "lora_" in n]
        for p in lora_params:
            p.data = p.data.float()
            p.requires_grad_(True)

    def encode(rows: list[int]) -> torch.Tensor:
        """Layer b's mean normalised input over each passage's tokens, with gradient when recording."""
        batch = batch_tokens([ids[i] for i in rows], [0] * len(rows), model.pad_id).to(bb.device)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = bb.embed(batch.input_ids)
            h = bb.run(h, range(0, b), bb.step(h, batch.positions, batch.valid))
            x = norm(h).float()
        weights = batch.valid.float()[..., None]
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1)

    def refresh() -> torch.Tensor:
        out = torch.empty(len(ids), bb.layer(b).self_attn.k_proj.in_features)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with torch.no_grad():
            for start in range(0, len(order), 64):
                rows = order[start : start + 64]
                out[torch.tensor(rows)] = encode(rows)
        return out

    key = bb.layer(b).self_attn.k_proj.weight.detach().float().clone().requires_grad_(True)
    w = torch.zeros(model.dim, x_train.shape[1], requires_grad=True)
    torch.nn.init.normal_(w, std=x_train.shape[1] ** -0.5)
    bias = torch.zeros(model.dim, requires_grad=True)
    optimizer = torch.optim.Adam([w, bias, key, *lora_params], lr=3e-3)
    clock = {"train_s": 0.0, "refresh_s": 0.0}
    start = time.perf_counter()
    features = refresh()
    clock["refresh_s"] += time.perf_counter() - start
    label = "LoRA + key" if lora else "key alone"
    curve = []
    for step in range(steps + 1):
        if step % refresh_every == 0 or step == steps:
            if step and lora:  # without the LoRA the features cannot move
                start = time.perf_counter()
                features = refresh()
                clock["refresh_s"] += time.perf_counter() - start
            with torch.no_grad():
                curve.append({"step": step, "recall": recall(features @ key.T, w, bias), **clock})
            print(f"{label}: step {step} dev recall@10 {curve[-1]['recall']} {clock}", flush=True)
        if step == steps:
            break
        start = time.perf_counter()
        pick = torch.randint(0, len(x_train), (32,)).tolist()
        positive = [int(gold_train[j][torch.randint(0, len(gold_train[j]), ()).item()]) for j in pick]
        fresh = sorted(set(positive))
        passages = features.clone()
        passages[fresh] = encode(fresh) if lora else features[fresh]
        scores = (x_train[pick] @ w.T + bias) @ (passages @ key.T).T
        loss = gold_nce(scores, [gold_train[j] for j in pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clock["train_s"] += time.perf_counter() - start
    if lora:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.model.modules():  # back to the base weights for anything after this
            if isinstance(module, BaseTunerLayer):
                module.delete_adapter("default")
    return curve


def _layer_b_inputs(model, ids: list[list[int]]):
    """Batches of passages (shortest first) run by the base backbone up to layer b: yields (rows, batch,
    step, h) with h the hidden states entering layer b."""
    import torch

    from imprag.model.reader import batch_tokens

    bb, b = model.backbone, model.split.b
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            batch = batch_tokens([ids[i] for i in rows], [0] * len(rows), model.pad_id).to(bb.device)
            step = bb.step(bb.embed(batch.input_ids), batch.positions, batch.valid)
            yield torch.tensor(rows), batch, step, bb.run(bb.embed(batch.input_ids), range(0, b), step)


def passage_features(model, texts: list[str]):
    """Mean over each passage's tokens of layer b's normalised attention input (B, hidden): every E_p that
    layer b's key projection W (no bias, no k-norm) can give is W applied to these (the mean is linear)."""
    import torch

    norm = model.backbone.layer(model.split.b).input_layernorm
    out = torch.empty(len(texts), model.backbone.layer(model.split.b).self_attn.k_proj.in_features)
    for rows, batch, _, h in _layer_b_inputs(model, model.passage_tokens(texts)):
        x, weights = norm(h).float(), batch.valid.float()[..., None]
        out[rows] = ((x * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu()
    return out


def key_sources(model, texts: list[str], titles: list[str], sources: list[str]):
    """The frozen passage features of `--key-sources`, in one pass of the base backbone up to the deepest
    layer named: (features {name: (N, hidden)}, the key each starts from {name: (D, width)}, the names
    trained with a residual MLP)."""
    import torch

    from imprag.model.reader import batch_tokens

    bb, b = model.backbone, model.split.b
    last = bb.num_layers
    depth = {s: last if s == "final" else int(s) for s in sources if s == "final" or s.isdigit()}
    if any(not 0 < n <= last for n in depth.values()):
        raise SystemExit(f"--key-sources: layers must be in 1..{last}, got {sources}")
    unknown = set(sources) - set(depth) - {"mlp", "title", "lead"}
    if unknown:
        raise SystemExit(
            f"--key-sources: unknown {sorted(unknown)}; use layer numbers, final, mlp, title, lead"
        )
    stops = sorted({b, *depth.values()})
    ids = model.passage_tokens(texts)
    lead_of = _title_lengths(model, ids, titles)
    n, hidden = len(ids), bb.layer(b).self_attn.k_proj.in_features
    means = {layer: torch.empty(n, hidden) for layer in stops}
    title, lead = torch.empty(n, hidden), torch.empty(n, hidden)
    order = sorted(range(n), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for start in range(0, n, 32):
            rows = order[start : start + 32]
            batch = batch_tokens([ids[i] for i in rows], [0] * len(rows), model.pad_id).to(bb.device)
            h0 = bb.embed(batch.input_ids)
            step = bb.step(h0, batch.positions, batch.valid)
            positions = torch.arange(batch.valid.shape[1], device=batch.valid.device)[None, :]
            in_title = batch.valid & (positions < torch.tensor([lead_of[i] for i in rows])[:, None])
            at = torch.tensor(rows)
            title[at] = _masked_mean(bb.layer(0).input_layernorm(h0), in_title)
            h, done = h0, 0
            for layer in stops:
                h, done = bb.run(h, range(done, layer), step), layer
                norm = bb.decoder.norm if layer == last else bb.layer(layer).input_layernorm
                means[layer][at] = _masked_mean(norm(h), batch.valid)
                if layer == b:
                    lead[at] = _masked_mean(norm(h), batch.valid & (positions < 32))
    key_b = bb.layer(b).self_attn.k_proj.weight.detach().float()
    features, init = {}, {}
    for source in sources:
        if source in depth:
            where = "the final norm's output" if source == "final" else f"layer {source}'s input"
            name = f"trained key over the mean of {where}"
            features[name] = means[depth[source]]
            init[name] = bb.layer(min(depth[source], last - 1)).self_attn.k_proj.weight.detach().float()
        elif source == "mlp":
            features["trained key + residual MLP over layer-b features"] = means[b]
        else:
            second = title if source == "title" else lead
            what = "title-line token embeddings" if source == "title" else "layer-b lead-32 mean"
            name = f"trained key over layer-b mean + {what}"
            features[name] = torch.cat([means[b], second], 1)
            init[name] = torch.cat([key_b, torch.zeros_like(key_b)], 1)
    mlp = {name for name in features if "MLP" in name}
    return features, init, mlp


def _masked_mean(x, mask):
    """Mean of x (B, T, H) over mask (B, T), fp32 on the CPU."""
    weights = mask.float()[..., None]
    return ((x.float() * weights).sum(1) / weights.sum(1).clamp_min(1)).cpu()


def _title_lengths(model, ids: list[list[int]], titles: list[str]) -> list[int]:
    """How many leading tokens of each passage are its title line (those it shares with the tokenized
    `title + "\n"`), at least one."""
    heads = model.tokenizer([f"{t}\n" for t in titles], add_special_tokens=True)["input_ids"]
    lead = []
    for row, head in zip(ids, heads, strict=True):
        n = 0
        while n < min(len(row), len(head)) and row[n] == head[n]:
            n += 1
        lead.append(max(1, n))
    return lead


def title_pooled(model, texts: list[str], titles: list[str]):
    """Layer b's pre-RoPE keys of each passage pooled over its title line (the tokens it shares with
    `title + "\n"`, at least one) and over all its tokens: two (N, G*D) tensors."""
    import torch

    from imprag.model.embeddings import passage_embedding, pool

    ids = model.passage_tokens(texts)
    lead = _title_lengths(model, ids, titles)
    title_out, mean_out = torch.empty(len(ids), model.dim), torch.empty(len(ids), model.dim)
    for rows, batch, step, h in _layer_b_inputs(model, ids):
        proj = model.backbone.project(model.split.b, h, step)
        positions = torch.arange(batch.valid.shape[1], device=batch.valid.device)[None, :]
        in_title = batch.valid & (positions < torch.tensor([lead[i] for i in rows.tolist()])[:, None])
        title_out[rows] = pool(proj.k_pre, in_title, "mean").float().cpu()
        mean_out[rows] = passage_embedding(proj, batch.valid, model.config.embedding).float().cpu()
    return title_out, mean_out


def features_to_e_p(model, features):
    """The mean-pooled pre-RoPE keys of layer b, from `passage_features`: the E_p of the base model."""
    return features @ model.backbone.layer(model.split.b).self_attn.k_proj.weight.detach().float().T


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
