#!/usr/bin/env bash
# The augmentation ablation of issue 22: CLIP cross-validated on the real offline corpus (first
# 5 outer folds of 1,000 articles, one inner fold each, the model kept by validation loss)
# with no augmentation, each augmentation alone, the ALE and KDA kernels as features and a
# combination; then each kept model's decoding of the evaluation set's held-out half.
#
#   WORK=/path bash scripts/ablate-augment.sh [NAME...]
#
# WORK holds train.corpus, atlas.nii.gz (HCPex on the 2 mm grid) and text.npy (+ .ids.txt), as
# scripts/build-default-model.sh makes them; target/eval-set from scripts/build-eval-set.sh.
# Writes WORK/ablation/<name>/ (model, metrics, decoding) and WORK/ablation/ablation.csv:
# name, recall@10, recall@100, mix_match (mean and sd over the folds), the task/concept/domain
# recall, p and MRR on the test half (reduced vocabulary, uniform prior, logit scale 20: the settings
# docs/eval-set.md chose on the tune half) and the seconds the training took.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:?set WORK to the folder with train.corpus, atlas.nii.gz and text.npy}"
OUT="$WORK/ablation"
N="${NICLIP:-$(cargo build --release --quiet --bin niclip --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)}"
[ -x "$N" ] || { echo "could not find the niclip binary" >&2; exit 1; }
mkdir -p "$OUT"

# name → train flags beyond the common ones.
declare -A FLAGS=(
    [none]=""
    [jitter4]="--augment jitter:sigma=4"
    [jitter8]="--augment jitter:sigma=8"
    [dropout20]="--augment dropout:p=0.2"
    [foci2]="--augment foci:k=2"
    [radius6-14]="--augment radius:6..14"
    [kda]="--kernel kda"
    [ale10]="--kernel ale --fwhm 10"
    [combo]="--augment jitter:sigma=4,dropout:p=0.2,radius:6..14"
)
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(none jitter4 jitter8 dropout20 foci2 radius6-14 kda ale10 combo)

A=assets/default
V="$A/vocabulary-reduced"
python3 scripts/uniform-prior.py "$V/vocabulary.txt" "$OUT/uniform-reduced.npy"

for name in "${NAMES[@]}"; do
    D="$OUT/$name"
    mkdir -p "$D"
    if [ ! -f "$D/model.safetensors" ]; then
        start=$(date +%s)
        # shellcheck disable=SC2086 # FLAGS holds several words on purpose
        "$N" train --text "$WORK/text.npy" --corpus "$WORK/train.corpus" \
            --atlas "$WORK/atlas.nii.gz" --labels ${FLAGS[$name]} \
            --cv --fold-size 1000 --outer-folds 5 --inner-folds 1 --seed 0 --resume \
            --metrics "$D/cv.csv" --out "$D/model.safetensors" --threads 2 \
            > "$D/train.txt" 2> "$D/train.log"
        echo $(( $(date +%s) - start )) > "$D/seconds"
    fi
    "$N" eval decoding --truth target/eval-set/test.tsv --permutations 1000 --out "$D/decoding" \
        --model "$D/model.safetensors" --vocabulary "$V/vocabulary.txt" \
        --vocabulary-emb "$V/vocabulary_emb.npy" --vocabulary-prior "$OUT/uniform-reduced.npy" \
        --ontology "$A/ontology" --atlas "$WORK/atlas.nii.gz" --labels --reduced \
        --logit-scale 20 > /dev/null 2> "$D/decoding.log"
    echo "$name done" >&2
done

python3 - "$OUT" "${NAMES[@]}" <<'EOF'
import csv, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
rows = []
for name in names:
    d = out / name
    m = {}
    for r in csv.DictReader(open(d / "cv.csv")):
        if r["split"] == "test" and r["fold"].isdigit():
            m.setdefault(r["metric"], []).append(float(r["value"]))
    dec = {r["level"]: r for r in csv.DictReader(open(d / "decoding" / "summary.csv"))
           if r["decoder"] == "niclip"}
    row = {"name": name}
    for k in ("recall@10", "recall@100", "mix_match"):
        v = m.get(k, [float("nan")])
        row[k] = statistics.mean(v)
        row[k + "_sd"] = statistics.pstdev(v)
    for lvl in ("task", "concept", "domain"):
        row[lvl + "_recall"] = float(dec[lvl]["recall"])
        row[lvl + "_p"] = float(dec[lvl]["p"])
        row[lvl + "_mrr"] = float(dec[lvl]["mrr"])
    row["seconds"] = (d / "seconds").read_text().strip() if (d / "seconds").exists() else ""
    rows.append(row)
with open(out / "ablation.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
for r in rows:
    print(f"| {r['name']} | {r['recall@10']*100:.1f} ± {r['recall@10_sd']*100:.1f} | "
          f"{r['recall@100']*100:.1f} ± {r['recall@100_sd']*100:.1f} | "
          f"{r['mix_match']:.1f} ± {r['mix_match_sd']:.1f} | {r['task_recall']:.3f} (p {r['task_p']:.3f}) | "
          f"{r['task_mrr']:.3f} | {r['concept_recall']:.3f} (p {r['concept_p']:.3f}) | "
          f"{r['domain_recall']:.3f} (p {r['domain_p']:.3f}) | {r['seconds']} |")
EOF
