#!/usr/bin/env bash
# Scores the default model's decoding settings on a truth file (issue 31: settings chosen by
# evaluation): the vocabulary (full, reduced) × the map's preparation (as it is, positive tail,
# top 5/10/20 % as a binary ROI) × the logit scale (learned, 10, 20) × the prior (the
# literature's, uniform), each with `niclip eval decoding`, gathered into one CSV.
#
#   bash scripts/eval-settings.sh TRUTH.tsv OUT_DIR
#
# OUT_DIR/settings.csv: vocabulary, preparation, logit_scale, prior, then task recall@4,
# concept recall@4, domain recall@2 and their permutation p-values. Each setting's own
# summary.csv and per_map.csv stay in OUT_DIR/<setting>/.
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,10p "$0" >&2; exit 2; }
TRUTH="$(realpath "$1")"
OUT="$2"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT="$(realpath "$OUT")"
N="$(cargo build --release --quiet --bin niclip --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$N" ] || { echo "could not find the niclip binary that cargo built" >&2; exit 1; }
A=assets/default


echo "vocabulary,preparation,logit_scale,prior,task_recall4,task_p,concept_recall4,concept_p,domain_recall2,domain_p" \
    > "$OUT/settings.csv.tmp"
for vocab in full reduced; do
    V="$A/vocabulary-$vocab"
    python3 scripts/uniform-prior.py "$V/vocabulary.txt" "$OUT/uniform-$vocab.npy"
    reduced=(); [ "$vocab" = reduced ] && reduced=(--reduced)
    for prep in asis positive top5 top10 top20; do
        case "$prep" in
            asis) flags=() ;;
            positive) flags=(--tail positive) ;;
            top*) flags=(--percentile "${prep#top}") ;;
        esac
        for scale in learned 10 20; do
            sflags=(); [ "$scale" = learned ] || sflags=(--logit-scale "$scale")
            for prior in literature uniform; do
                P="$V/vocabulary_prior.npy"; [ "$prior" = uniform ] && P="$OUT/uniform-$vocab.npy"
                name="$vocab-$prep-$scale-$prior"
                "$N" eval decoding --truth "$TRUTH" --permutations 1000 --out "$OUT/$name" \
                    --model "$A/model.safetensors" --vocabulary "$V/vocabulary.txt" \
                    --vocabulary-emb "$V/vocabulary_emb.npy" --vocabulary-prior "$P" \
                    --ontology "$A/ontology" --atlas "$A/atlas.nii.gz" --labels \
                    "${reduced[@]}" "${flags[@]}" "${sflags[@]}" > /dev/null 2> "$OUT/$name.log" \
                    || { echo "$name failed: see $OUT/$name.log" >&2; continue; }
                # niclip's rows of summary.csv: decoder,level,k,maps,recall,hit,null_recall,p,ratio
                awk -F, -v s="$vocab,$prep,$scale,$prior" '
                    $1 == "niclip" { r[$2] = $5; p[$2] = $8 }
                    END { print s "," r["task"] "," p["task"] "," r["concept"] "," p["concept"] "," r["domain"] "," p["domain"] }
                ' "$OUT/$name/summary.csv" >> "$OUT/settings.csv.tmp"
                echo "$name done" >&2
            done
        done
    done
done
mv "$OUT/settings.csv.tmp" "$OUT/settings.csv"
echo "wrote $OUT/settings.csv" >&2
