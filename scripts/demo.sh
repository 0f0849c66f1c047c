#!/usr/bin/env bash
# The README main job, on the embedded defaults: SmolLM2-135M with the ImpRAG adapter trained by the CPU
# recipe (models/smollm2-135m-imprag, see its README). Index the 10,033 embedded Wikipedia summaries with
# the model's bottom layers (once; an interrupted build resumes; the adapter was trained with frozen
# passages, so passages go through the base weights and this is the base model's index), answer prompts in
# the method's four task formats with implicit retrieval, showing the articles each prompt retrieved and
# BM25's picks beside them; then build the benchmark and score closed-book, BM25 and ImpRAG (the same
# trained model) on a small sample of its test split (the full runs are in docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
IMPRAG=.venv/bin/imprag
MODEL="${IMPRAG_MODEL:-models/smollm2-135m-imprag}"
INDEX="${IMPRAG_INDEX:-indexes/wiki-summaries-imprag}"
if [ ! -f "$INDEX/manifest.json" ]; then
    "$IMPRAG" index wiki-summaries --out "$INDEX" --model "$MODEL" --baselines bm25
elif ! check=$("$IMPRAG" retrieve "$INDEX" "Q: Who painted the Mona Lisa? A:" -k 1 --model "$MODEL" 2>&1 >/dev/null); then
    # an index built with another version of the adapter is stale: re-encode its passages with this one
    grep -q "stale" <<<"$check" || { echo "$check" >&2; exit 1; }
    "$IMPRAG" index --refresh --out "$INDEX" --model "$MODEL"
fi
PROMPTS=(
    "Q: Who painted the Mona Lisa? A:"
    "Kenya [SEP] capital Provide the answer corresponding to the relation specified after [SEP] for the entity mentioned before [SEP] A:"
    "Is this statement true? The Nile flows into the Mediterranean Sea. A:"
    "The theory of relativity was developed by [START] Einstein [END] in the early 1900s. Output the Wikipedia page title of the entity mentioned between [START] and [END] in the given text A:"
)
echo "== ImpRAG ($MODEL): implicit query at layer b, passages read by layers b..t =="
"$IMPRAG" ask "$INDEX" "${PROMPTS[@]}" -k 5 --max-new-tokens 24 --stop $'\n'
echo
echo "== for comparison: BM25 with the whole prompt as the query =="
"$IMPRAG" retrieve "$INDEX" "${PROMPTS[@]}" -k 3 --retriever bm25
echo
echo "== the benchmark: build it, then score closed-book, BM25 and ImpRAG on 8 test items per task =="
BENCH="${IMPRAG_BENCH:-data/benchmark}"
[ -f "$BENCH/benchmark.json" ] || "$IMPRAG" data build --out "$BENCH"
# a model trained with frozen passages (model.passages=frozen) is scored as imprag-frozen, the others as imprag
SYSTEM=imprag
grep -q '"passages": "frozen"' "$MODEL/imprag_config.json" 2>/dev/null && SYSTEM=imprag-frozen
"$IMPRAG" eval --data "$BENCH" --index "$INDEX" --system "closed-book,bm25,$SYSTEM" \
    --out runs/demo-imprag --limit 8 --overwrite  # a small sample: re-scored on every run
