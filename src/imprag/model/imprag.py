"""The ImpRAG facade: one decoder-only LM that retrieves with its bottom layers, reads with its middle
layers and generates with all of them (method page, "Two-stage inference").

    prompt -> layers 0..b-1 -> layer b: q/k/v -> E_q -> retriever.search -> passages
           -> passage K/V of layers b..t (passages run once through layers 0..t)
           -> layer b attends to [passages; prompt] -> layers b+1..t likewise -> layers t+1..N-1 prompt only
           -> decode with a KV cache; passages are never recomputed per token

The wrapped Hugging Face model stays reachable as `.model` with unchanged state_dict keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from imprag.config import (
    IMPRAG_CONFIG_NAME,
    DecodeConfig,
    EmbeddingConfig,
    ImpRAGConfig,
    LayerSplit,
    ReaderConfig,
)
from imprag.model.adapters import base_weights, has_adapters
from imprag.model.backbone import Backbone, KVCache, Projection
from imprag.model.embeddings import passage_embedding, query_embedding
from imprag.model.generation import Generation, GenerationObserver, RetrievedPassage, decode
from imprag.model.query_pooling import QUERY_SCORER_FILE, token_scores
from imprag.model.reader import InputError, TokenBatch, batch_tokens, pack_passages, passage_kv, tokenize
from imprag.model.retrieval_key import RETRIEVAL_KEY_FILE, base_key_weight, key_inputs
from imprag.model.retriever import Retriever
from imprag.model.weight_file import save_weight

__all__ = ["ImpRAG", "Prefill"]

log = logging.getLogger(__name__)

DtypeLike = torch.dtype | str | None


@dataclass
class Prefill:
    """State after the prompt's forward pass."""

    hidden: Tensor  # (B, T, E) last layer's hidden states (before the final norm)
    query: Tensor  # (B, G*D) E_q read at layer b
    cache: KVCache | None  # prompt K/V of every layer (when caching)
    passages: KVCache | None  # passage K/V of layers b..t (None when nothing was read)


class ImpRAG:
    """A stock `*ForCausalLM` + tokenizer, run as an ImpRAG model.

    Construct from loaded parts, `ImpRAG(hf_model, tokenizer, LayerSplit(b, t))`, or with
    `ImpRAG.from_pretrained("smollm2-135m" | path | hub id, b=..., t=...)`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        split: LayerSplit | None = None,
        embedding: EmbeddingConfig | None = None,
        reader: ReaderConfig | None = None,
        passages: str = "shared",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.backbone = Backbone(model)
        n = self.backbone.num_layers
        split = (split or LayerSplit.default_for(n)).validate_for(n)
        self.retrieval_key: torch.nn.Parameter | None = None
        """W_ret (D, hidden) with `EmbeddingConfig.retrieval_key="trained"` (model/retrieval_key.py), else
        None. It starts at layer b's key projection when the config turns it on; training moves it,
        `from_pretrained` loads a trained one."""
        self.query_scorer: torch.nn.Parameter | None = None
        """v (hidden,) with `EmbeddingConfig.query_pooling="attention"` (model/query_pooling.py), else None.
        It starts at 0 (mean pooling) when the config turns it on; training moves it, `from_pretrained`
        loads a trained one."""
        self.config = ImpRAGConfig(
            split,
            embedding or EmbeddingConfig(),
            reader or ReaderConfig(),
            passages,  # type: ignore[arg-type]
        )
        self.pad_id = _pad_id(tokenizer, model)
        self.source: str = str(model.config.name_or_path)
        """What the model was loaded from (an embedded default's name, a path or a hub id)."""

    # -- construction / persistence ----------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        b: int | None = None,
        t: int | None = None,
        dtype: DtypeLike = "auto",
        embedding: EmbeddingConfig | None = None,
        reader: ReaderConfig | None = None,
        passages: str | None = None,
        weights: bool = True,
        **hf_kwargs: Any,
    ) -> ImpRAG:
        """Load an ImpRAG model.

        `name_or_path`: an embedded default (`"smollm2-135m"`, loaded offline from an installed package),
        a local folder (a stock HF checkpoint, or one saved by `save_pretrained` with its
        `imprag_config.json`), or a hub id when the network allows. `b`/`t` override the saved or
        default split; `dtype` ("float32", "bfloat16", "float16" or a torch dtype) defaults to "auto": the
        dtype this machine's CPU runs fast (bf16 only with native bf16 kernels; `imprag.hardware`), whatever
        the checkpoint's own. For a GPU pass `dtype=imprag.hardware.auto_dtype("cuda")`, then `.to("cuda")`.
        `passages` ("shared" or "frozen", `ImpRAGConfig.passages`) defaults to the saved value, else shared.
        `weights=False` reads the config alone and builds the model on the meta device: its shapes,
        dimensions and byte counts without reading or holding a weight (`imprag index --estimate` sizes a
        build this way); it cannot run. Other keyword arguments go to `AutoModelForCausalLM.from_pretrained`.
        """
        from imprag.model.loading import load

        return load(cls, name_or_path, b, t, dtype, embedding, reader, passages, weights, **hf_kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save model, tokenizer and `imprag_config.json`; the folder loads in stock transformers too."""
        from imprag.io import atomic_directory

        if has_adapters(self.model):
            raise InputError(
                "this model carries an unmerged LoRA adapter (passages='frozen'): save_pretrained would "
                "write peft's layer names into a stock checkpoint; copy the adapter folder it was loaded "
                "from, or export it with imprag.training.checkpoint.export_model"
            )
        with atomic_directory(directory, replaces=IMPRAG_CONFIG_NAME) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.config.save(tmp)
            for name, weight in self.side_weights().items():
                save_weight(weight, tmp, name)
        return Path(directory)

    def side_weights(self) -> dict[str, torch.nn.Parameter]:
        """The learned weights this model keeps outside the HF model, by the file each is saved as beside
        it: W_ret (`retrieval_key.safetensors`) and v (`query_scorer.safetensors`) when the config has
        them. Saving, fingerprinting, training and checkpoints go through this one list."""
        weights = {}
        if self.retrieval_key is not None:
            weights[RETRIEVAL_KEY_FILE] = self.retrieval_key
        if self.query_scorer is not None:
            weights[QUERY_SCORER_FILE] = self.query_scorer
        return weights

    def retrieval_fingerprint(self) -> str:
        """Hash of everything that determines E_p: the weights of the embeddings and layers 0..b, b, the
        embedding settings and l_max. An index records it; a different value means the index is stale.

        Weights are hashed after rounding to bf16, so the same checkpoint loaded in fp32 or bf16 matches.
        The result is cached until any of those weights is modified in place (e.g. by an optimizer step)
        or a setting changes. With `passages="frozen"` only the base weights encode passages: adapter
        weights are left out and peft's `base_layer` names read as the stock ones, so the value is the
        base model's, and an index of the base serves every adapter trained on it.
        """
        frozen = self.config.passages == "frozen"
        params = [("embed", self.backbone.decoder.embed_tokens.weight)]
        for i in range(self.split.b + 1):
            named = [
                (n.replace(".base_layer.", ".") if frozen else n, p)
                for n, p in self.backbone.layer(i).named_parameters()
                if not (frozen and "lora_" in n)
            ]
            params += [(f"layer{i}.{n}", p) for n, p in sorted(named, key=lambda x: x[0])]
        settings = {
            "model_type": self.model.config.model_type,
            "b": self.split.b,
            "embedding": self.config.embedding.passage_side(),  # mu_q shifts E_q only
            "l_max": self.config.reader.l_max,
        }
        return self._fingerprint("_retrieval_fp", params, settings)

    def model_fingerprint(self) -> str:
        """Hash of every weight and the whole ImpRAG configuration: what an evaluation's answers depend on
        (a resumed evaluation refuses a model whose value differs). Same rounding and caching as
        `retrieval_fingerprint`; the first call reads every weight once."""
        params = sorted(self.model.named_parameters())
        params += list(self.side_weights().items())
        settings = {"model_type": self.model.config.model_type, "imprag": self.config.to_dict()}
        return self._fingerprint("_model_fp", params, settings)

    def _fingerprint(
        self, slot: str, params: list[tuple[str, torch.Tensor]], settings: dict[str, Any]
    ) -> str:
        text = json.dumps(settings, sort_keys=True)
        version = (text, tuple((id(p), p._version) for _, p in params))
        cached = getattr(self, slot, None)
        if cached is not None and cached[0] == version:
            return cached[1]
        digest = hashlib.sha256()
        digest.update(text.encode())
        with torch.no_grad():
            for name, p in params:
                digest.update(name.encode())
                digest.update(
                    p.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
                )
        value = digest.hexdigest()[:24]
        setattr(self, slot, (version, value))
        return value

    @property
    def split(self) -> LayerSplit:
        return self.config.split

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def dim(self) -> int:
        """Dimension D of E_q and E_p: KV heads x head dim."""
        return self.backbone.num_kv_heads * self.backbone.head_dim

    @property
    def config(self) -> ImpRAGConfig:
        """The ImpRAG settings. Setting them checks mu_q's size, switches the trained retrieval key on
        (W_ret from layer b's key projection) or off with `embedding.retrieval_key`, and the query scorer
        on (v = 0, mean pooling) or off with `embedding.query_pooling`."""
        return self._config

    @config.setter
    def config(self, config: ImpRAGConfig) -> None:
        center = config.embedding.query_center
        if center is not None and len(center) != self.dim:
            raise InputError(
                f"EmbeddingConfig.query_center has {len(center)} values but this model's E_q has {self.dim}: "
                "it was estimated for another model (imprag_config.json); re-run ImpRAG.calibrate"
            )
        if config.embedding.retrieval_key == "base":
            self.retrieval_key = None
        elif self.retrieval_key is None:
            if self.backbone.arch.qk_norm:
                raise InputError(
                    "EmbeddingConfig.retrieval_key='trained' needs keys linear in layer b's input; this "
                    "family normalises keys (k_norm): use retrieval_key='base'"
                )
            k_proj = self.backbone.layer(config.split.b).self_attn.k_proj
            self.retrieval_key = torch.nn.Parameter(base_key_weight(k_proj).float().clone(), False)
        if config.embedding.query_side_pooling != "attention":
            self.query_scorer = None
        elif self.query_scorer is None:
            self.query_scorer = torch.nn.Parameter(torch.zeros(self.model.config.hidden_size), False)
        self._config = config

    @property
    def index_dim(self) -> int:
        """Dimension of the vectors an index of this model holds: E_p (`dim`), or with a trained retrieval
        key the layer-b inputs f_p (hidden size) that it maps."""
        if self.retrieval_key is None:
            return self.dim
        return self.retrieval_key.shape[1]

    def index_query(self, e_q: Tensor) -> Tensor:
        """E_q (B, D) as searched against an index: itself, or with a trained retrieval key W_ret^T E_q
        (B, hidden), whose dot product with f_p is E_q . W_ret f_p (in fp32, differentiable in W_ret)."""
        if self.retrieval_key is None:
            return e_q
        return e_q.float() @ self.retrieval_key.to(e_q.device)

    def __repr__(self) -> str:
        name = self.model.config.name_or_path or type(self.model).__name__
        return f"ImpRAG({name!r}, {self.split}, dim={self.dim}, dtype={self.backbone.dtype})"

    # -- tensor-level API (differentiable; used by training and tests) -----------------------------

    def encode_queries(self, prompts: TokenBatch) -> Tensor:
        """E_q (B, D): layers 0..b-1 and layer b's projections only."""
        return self._bottom(prompts, passage=False)

    def encode_passages(self, passages: TokenBatch) -> Tensor:
        """E_p (B, D): layers 0..b-1 and layer b's projections only (the base weights, without gradient,
        when passages are frozen). With a trained retrieval key, f_p (B, hidden) instead: what an index
        holds and `index_query` scores against."""
        return self._bottom(passages, passage=True)

    @contextmanager
    def passage_pass(self) -> Iterator[None]:
        """The weights a passage pass runs with: the model's own ('shared'), or with passages frozen the
        base's, any LoRA adapter switched off, and no gradient (nothing that trains touches them)."""
        if self.config.passages != "frozen":
            yield
            return
        with base_weights(self.model), torch.no_grad():
            yield

    def forward(
        self, prompts: TokenBatch, passages: TokenBatch | None = None, select: Tensor | None = None
    ) -> Tensor:
        """Logits (B, T, V) of the prompts, each reading its row of packed `passages` in layers b..t.

        With `select` (B, T) bool, only the selected positions' logits, (n, V) in row-major order (training
        needs the answer positions only; the full (B, T, V) tensor is mostly vocabulary-sized waste)."""
        if select is not None and (select.dtype != torch.bool or select.shape != prompts.input_ids.shape):
            raise InputError(
                f"select must be a bool mask shaped like the prompts {tuple(prompts.input_ids.shape)}, got "
                f"{select.dtype} {tuple(select.shape)}"
            )
        pre = self._prefill(prompts, lambda _: passages, cache=False)
        hidden = pre.hidden if select is None else pre.hidden[select.to(pre.hidden.device)]
        return self.backbone.logits(hidden)

    __call__ = forward

    def _bottom(self, batch: TokenBatch, passage: bool) -> Tensor:
        if passage:
            with self.passage_pass():
                return self._bottom_pass(batch, passage)
        return self._bottom_pass(batch, passage)

    def _bottom_pass(self, batch: TokenBatch, passage: bool) -> Tensor:
        bb, b = self.backbone, self.split.b
        batch = batch.to(bb.device)
        h = bb.embed(batch.input_ids)
        step = bb.step(h, batch.positions, batch.valid)
        h = bb.run(h, range(0, b), step)
        if passage and self.retrieval_key is not None:  # f_p: what W_ret maps onto E_p
            return key_inputs(bb.layer(b).input_layernorm(h), batch.valid)
        proj = bb.project(b, h, step)
        if passage:
            return passage_embedding(proj, batch.valid, self.config.embedding)
        return self._query(h, proj, batch.valid)

    def _query(self, h: Tensor, proj: Projection, valid: Tensor) -> Tensor:
        """E_q from layer b's input h and its projection (with attention pooling, v scores h's tokens)."""
        scores = None
        if self.query_scorer is not None:
            scores = token_scores(self.backbone.layer(self.split.b).input_layernorm(h), self.query_scorer)
        return query_embedding(proj, valid, self.backbone.num_kv_heads, self.config.embedding, scores)

    def _prefill(
        self,
        prompts: TokenBatch,
        passages_for: Callable[[Tensor], TokenBatch | None],
        cache: bool,
    ) -> Prefill:
        """One forward pass over the prompts. At layer b, `passages_for(E_q)` picks what to read; the pass
        then continues from layer b (nothing below it is recomputed)."""
        bb, split = self.backbone, self.split
        prompts = prompts.to(bb.device)
        h = bb.embed(prompts.input_ids)
        kv = KVCache.empty(h.shape[0], bb.device) if cache else None
        step = bb.step(h, prompts.positions, prompts.valid, cache=kv, reading_layers=split.middle)
        h = bb.run(h, range(0, split.b), step)
        proj = bb.project(split.b, h, step)
        query = self._query(h, proj, prompts.valid)
        chosen = passages_for(query)
        if chosen is not None:
            _check_layout(prompts, chosen)
        if chosen is not None and bool(chosen.valid.any()):
            with self.passage_pass():
                step.passages = passage_kv(bb, chosen, split)
        h = bb.attend(split.b, h, proj, step)
        h = bb.run(h, range(split.b + 1, bb.num_layers), step)
        step.commit()
        return Prefill(hidden=h, query=query, cache=kv, passages=step.passages)

    # -- text-level API -----------------------------------------------------------------------------

    def prompt_batch(
        self, prompts: Sequence[str], offsets: Sequence[int] | int = 0, padding_side: str = "right"
    ) -> TokenBatch:
        """Tokenize prompts into a batch whose row i starts at position offsets[i] (k_i * l_max)."""
        ids = tokenize(self.tokenizer, prompts, "prompt")
        if isinstance(offsets, int):
            offsets = [offsets] * len(ids)
        self._check_lengths(ids, list(offsets), 0)
        return batch_tokens(ids, offsets, self.pad_id, padding_side)  # type: ignore[arg-type]

    def read_batch(
        self, prompts: Sequence[str], passages: Sequence[Sequence[str]], padding_side: str = "right"
    ) -> tuple[TokenBatch, TokenBatch]:
        """Prompt and passage batches laid out together for `forward`: prompt i starts at
        len(passages[i]) * l_max and its passages sit below it, as in `generate`."""
        self._check_passage_lists(passages, len(prompts))
        offsets = [self.config.reader.prompt_start(len(p)) for p in passages]
        return self.prompt_batch(prompts, offsets, padding_side), self.passage_batch(passages, offsets)

    def passage_tokens(self, texts: Sequence[str], warn: bool = False) -> list[list[int]]:
        """Token ids of passages, each truncated to l_max (the same tokens whether embedded or read).
        With `warn`, log which passages lost tokens (used for passages a caller hands to `generate`)."""
        l_max = self.config.reader.l_max
        ids = tokenize(self.tokenizer, texts, "passage")
        if warn and any(len(row) > l_max for row in ids):
            cut = [n for n, row in enumerate(ids) if len(row) > l_max]
            log.warning("passage(s) %s truncated to l_max=%d tokens", cut, l_max)
        return [row[:l_max] for row in ids]

    def passage_batch(
        self, passages: Sequence[Sequence[str]], offsets: Sequence[int] | None = None, warn: bool = True
    ) -> TokenBatch:
        """Pack each prompt's passages into one row, laid out below that prompt's start `offsets[i]`
        (default: len(passages[i]) * l_max, as `generate` does for given passages). `warn` logs
        truncation (off for passages from an index, which were embedded truncated the same way)."""
        rows = [self.passage_tokens(p, warn=warn) if len(p) else [] for p in passages]
        if offsets is None:
            offsets = [self.config.reader.prompt_start(len(p)) for p in passages]
        ends = offsets if self.config.reader.layout == "flush" else None
        return pack_passages(rows, self.pad_id, ends)

    @torch.no_grad()
    def embed_queries(self, prompts: Sequence[str], batch_size: int = 32, k: int | None = None) -> Tensor:
        """E_q (B, D) for each prompt, read where `generate(..., k=k)` reads it: with the prompt at
        position k*l_max (k defaults to reader.k). Pre-RoPE vectors barely depend on k (bf16 rounding);
        post-RoPE ones do."""
        ids = tokenize(self.tokenizer, prompts, "prompt")
        offsets = [self.config.reader.prompt_start(self.config.reader.k if k is None else k)] * len(ids)
        self._check_lengths(ids, offsets, 0)
        return self._embed(ids, offsets, batch_size, passage=False)

    @torch.no_grad()
    def calibrate(self, prompts: Sequence[str], batch_size: int = 32, k: int | None = None) -> Tensor:
        """Estimate mu_q, the mean uncentered E_q over `prompts` (a few hundred prompts of the formats the
        model will see), and score with (E_q - mu_q) . E_p from now on (`EmbeddingConfig.query_center`,
        saved with the model). `k`: the prompts sit where k passages are read (as in `embed_queries`).
        Returns mu_q (D,). Passages and indexes are unaffected."""
        if not prompts:
            raise InputError("calibrate needs at least one prompt")
        e_q = self.embed_queries(prompts, batch_size=batch_size, k=k).double()
        center = self.config.embedding.query_center
        if center is not None:  # uncentered: add the current mu_q back
            e_q += torch.tensor(center, dtype=torch.float64)
        mean = e_q.mean(0).float()
        embedding = dataclasses.replace(self.config.embedding, query_center=tuple(mean.tolist()))
        self.config = dataclasses.replace(self.config, embedding=embedding)
        return mean

    @torch.no_grad()
    def embed_passages(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        """E_p (N, D) for each passage (truncated to l_max tokens, at positions from 0); with a trained
        retrieval key f_p (N, hidden), the vectors an index holds (`index_dim`)."""
        ids = self.passage_tokens(texts)
        return self._embed(ids, [0] * len(ids), batch_size, passage=True)

    def _embed(self, ids: list[list[int]], offsets: list[int], batch_size: int, passage: bool) -> Tensor:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        # Sort by length so batches carry little padding; results are returned in input order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), self.index_dim if passage else self.dim, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = batch_tokens([ids[i] for i in rows], [offsets[i] for i in rows], self.pad_id)
            vectors = self._bottom(batch, passage=passage)
            out[torch.tensor(rows)] = vectors.float().cpu()
        return out

    @torch.no_grad()
    def retrieve(
        self, prompts: Sequence[str], index: Retriever, k: int | None = None
    ) -> list[list[RetrievedPassage]]:
        """Top-k passages per prompt by the implicit query E_q (no generation)."""
        k = self._check_k(k, index)
        return self._search(index, self.embed_queries(prompts, k=k), k)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        passages: Sequence[Sequence[str]] | None = None,
        index: Retriever | None = None,
        k: int | None = None,
        decode_config: DecodeConfig | None = None,
        observer: GenerationObserver | None = None,
        **decode_kwargs: Any,
    ) -> list[Generation]:
        """Answer each prompt, reading `passages[i]` (given) or the top-k of `index` (retrieved at layer b).

        Decoding options are a `DecodeConfig` or its fields as keywords (max_new_tokens, do_sample,
        temperature, top_k, top_p, stop, seed). With neither passages nor index the model reads nothing.
        `observer` sees the passages read, each token as it is chosen and each row as it ends, and may end
        a row early (streaming; model/generation.py).
        """
        cfg = _decode_config(decode_config, decode_kwargs)
        if passages is not None and index is not None:
            raise InputError("pass either passages=... or index=..., not both")
        ids = tokenize(self.tokenizer, prompts, "prompt")
        start = self.config.reader.prompt_start
        if passages is not None:
            self._check_passage_lists(passages, len(ids))
            if k is not None:
                raise InputError("k applies to retrieval from an index; with passages=... all are read")
            offsets = [start(len(p)) for p in passages]
        elif index is not None:
            k = self._check_k(k, index)
            offsets = [start(k)] * len(ids)
        else:
            offsets = [0] * len(ids)
        self._check_lengths(ids, offsets, cfg.max_new_tokens)
        batch = batch_tokens(ids, offsets, self.pad_id, padding_side="right")
        read: list[list[RetrievedPassage]] = [
            [RetrievedPassage(text) for text in p] for p in (passages or [[]] * len(ids))
        ]

        def passages_for(query: Tensor) -> TokenBatch | None:
            if index is not None:
                read[:] = self._search(index, query, k)  # type: ignore[arg-type]
            if not any(read):
                return None
            contents = [[p.content for p in row] for row in read]
            return self.passage_batch(contents, offsets, warn=index is None)

        pre = self._prefill(batch, passages_for, cache=True)
        if observer is not None:
            observer.read(read)
        last = torch.tensor(batch.lengths) - 1  # right padding: last valid column per row
        rows = torch.arange(len(ids))
        first = self.backbone.logits(pre.hidden[rows, last])  # (B, V)
        next_pos = batch.positions[rows, last].to(self.device) + 1  # (B,)

        def next_logits(tokens: Tensor) -> Tensor:
            nonlocal next_pos
            bb = self.backbone
            h = bb.embed(tokens)
            step = bb.step(
                h,
                next_pos[:, None],
                torch.ones_like(tokens, dtype=torch.bool),
                cache=pre.cache,
                passages=pre.passages,
                reading_layers=self.split.middle,
            )
            h = bb.run(h, range(bb.num_layers), step)
            step.commit()
            next_pos = next_pos + 1
            return bb.logits(h[:, -1])

        outputs = decode(first, next_logits, cfg, self._eos_ids(), self.tokenizer, self.pad_id, observer)
        return [
            Generation(prompt=p, text=text, passages=read[i], token_ids=toks, finish_reason=reason)
            for i, (p, (toks, text, reason)) in enumerate(zip(prompts, outputs, strict=True))
        ]

    # -- helpers ------------------------------------------------------------------------------------

    def _search(self, index: Retriever, query: Tensor, k: int) -> list[list[RetrievedPassage]]:
        ids, scores = index.search(self.index_query(query), k)
        out = []
        for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
            keep = [(i, s) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]  # FAISS pads with -1
            found = index.fetch([i for i, _ in keep])
            out.append(
                [
                    RetrievedPassage(p.text, float(s), id=p.id, title=p.title, row=i)
                    for (i, s), p in zip(keep, found, strict=True)
                ]
            )
        return out

    def _check_passage_lists(self, passages: Any, count: int) -> None:
        ok = not isinstance(passages, str) and hasattr(passages, "__len__") and len(passages) == count
        ok = ok and all(
            not isinstance(p, str) and isinstance(p, Sequence) and all(isinstance(t, str) for t in p)
            for p in passages
        )
        if not ok:
            raise InputError(
                f"passages must be one list of strings per prompt ({count} lists), e.g. "
                "passages=[['text a', 'text b']] for one prompt"
            )

    def _check_k(self, k: int | None, index: Retriever) -> int:
        if not (callable(getattr(index, "search", None)) and callable(getattr(index, "fetch", None))):
            raise InputError(
                f"index must be a retriever with search(E_q, k) and fetch(ids) (e.g. PassageIndex or "
                f"InMemoryRetriever), got {type(index).__name__}"
            )
        check = getattr(index, "check_model", None)
        if callable(check):  # an index loaded without a model was never checked against this one
            check(self)
        k = self.config.reader.k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        size = len(index) if hasattr(index, "__len__") else None
        if size is not None and k > size:
            raise InputError(f"k={k} passages requested but the index holds only {size}; lower k")
        return k

    def _check_lengths(self, ids: list[list[int]], offsets: list[int], new_tokens: int) -> None:
        limit = self.backbone.max_positions
        for i, (seq, offset) in enumerate(zip(ids, offsets, strict=True)):
            need = offset + len(seq) + new_tokens
            if need > limit:
                raise InputError(
                    f"prompt {i} does not fit the context window: {offset} passage positions (k*l_max) + "
                    f"{len(seq)} prompt tokens + {new_tokens} new tokens = {need} > {limit} positions "
                    "of this model; shorten the prompt or lower k, l_max or max_new_tokens"
                )

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return sorted(ids)


def _check_layout(prompts: TokenBatch, passages: TokenBatch) -> None:
    """Passages must sit strictly below their prompt's positions (causality is by position)."""
    if passages.input_ids.shape[0] != prompts.input_ids.shape[0]:
        raise InputError(
            f"{passages.input_ids.shape[0]} passage rows for {prompts.input_ids.shape[0]} prompts: "
            "pack one row of passages per prompt (an empty row reads nothing)"
        )
    if passages.input_ids.shape[1] == 0:
        return
    big = torch.iinfo(torch.long).max
    first_prompt = prompts.positions.masked_fill(~prompts.valid, big).min(dim=1).values.cpu()
    last_passage = passages.positions.masked_fill(~passages.valid, -1).max(dim=1).values.cpu()
    bad = (last_passage >= first_prompt).nonzero().flatten().tolist()
    if bad:
        raise InputError(
            f"row {bad[0]}: passages reach position {int(last_passage[bad[0]])} but the prompt starts at "
            f"{int(first_prompt[bad[0]])}; prompts must start after their passages (k*l_max). Build both "
            "batches with ImpRAG.read_batch(prompts, passages)"
        )


def _pad_id(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    # Padding is masked everywhere, so any valid id works; prefer the tokenizer's own.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, model.config.pad_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def _decode_config(cfg: DecodeConfig | None, kwargs: dict[str, Any]) -> DecodeConfig:
    if cfg is not None and kwargs:
        raise InputError("pass decoding options either as decode_config=DecodeConfig(...) or as keywords")
    if cfg is not None:
        return cfg
    known = {f.name for f in dataclasses.fields(DecodeConfig)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(
            f"unknown decoding option(s) {unknown}; the fields of DecodeConfig are {sorted(known)}"
        )
    try:
        return replace(DecodeConfig(), **kwargs)
    except TypeError as err:
        raise InputError(f"invalid decoding option: {err}") from err
