#!/usr/bin/env bash
# Rebuilds the default model shipped in assets/default/ from ../shared/data and the two PyPI
# models, deterministically (run it twice: the assets are byte-identical).
#
#   bash scripts/build-default-model.sh            # writes assets/default/, keeps work files
#   WORK=/tmp/x bash scripts/build-default-model.sh
#   AUGMENT= EXCLUDE_IDS=target/eval-set/train-exclude-ids.txt OUT=/tmp/m bash scripts/build-default-model.sh
#
# Steps: Neurosynth v7 ∪ NeuroQuery (titles; abstracts joined from labelbuddy) → MKDA maps
# projected on HCPex (426 regions, resampled to the 2 mm grid) → texts embedded with
# all-MiniLM-L6-v2 → CLIP trained with the paper's hyper-parameters and peak jitter (each
# training study's peaks moved by N(0, 4²) mm per axis, drawn anew every epoch: the best of
# scripts/ablate-augment.sh), cross-validated on outer folds of 1,000 articles, the kept model
# chosen by validation loss → the Cognitive Atlas
# vocabularies (full and reduced) embedded with the same text model, priors from the
# training texts.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${NICLIP_SHARED_DATA:-../shared/data}"
WORK="${WORK:-target/default-model}"
OUT="${OUT:-assets/default}"
# One thread count everywhere: the floating-point sums (and so the bytes) depend on it.
THREADS=2
TEXT_MODEL="${TEXT_MODEL:-minilm}"
# Training-time augmentation (`niclip train --augment`; empty: none).
AUGMENT="${AUGMENT-jitter:sigma=4}"
# Articles to leave out of training, a file of ids (e.g. the evaluation set's
# train-exclude-ids.txt from scripts/build-eval-set.sh; empty: none).
EXCLUDE_IDS="${EXCLUDE_IDS-}"
mkdir -p "$WORK" "$OUT"

# The binary wherever cargo puts it (CARGO_TARGET_DIR, .cargo/config), as cargo reports it.
N="$(cargo build --release --quiet --bin niclip --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$N" ] || { echo "could not find the niclip binary that cargo built" >&2; exit 1; }
eval "$(bash scripts/fetch-models.sh)"
case "$TEXT_MODEL" in
    minilm) MODEL="$NICLIP_MINILM_DIR" ;;
    smollm) MODEL="$NICLIP_SMOLLM_GGUF" ;;
    *) echo "TEXT_MODEL is minilm or smollm" >&2; exit 2 ;;
esac

# 1. The corpus.
JOIN="$DATA/corpus/labelbuddy/labelbuddy_documents_fulltext.jsonl.gz"
$N corpus import --format neurosynth "$DATA/corpus/neurosynth" --text-jsonl "$JOIN" --out "$WORK/neurosynth.corpus"
$N corpus import --format neuroquery "$DATA/corpus/neuroquery" --text-jsonl "$JOIN" --out "$WORK/neuroquery.corpus"
$N corpus merge "$WORK/neurosynth.corpus" "$WORK/neuroquery.corpus" --out "$WORK/train.corpus"
if [ -n "$EXCLUDE_IDS" ]; then
    $N corpus filter "$WORK/train.corpus" --exclude-ids "$EXCLUDE_IDS" --out "$WORK/kept.corpus"
    mv "$WORK/kept.corpus" "$WORK/train.corpus"
fi

# 2. Image features on the atlas, on the 2 mm grid the MKDA maps live on.
$N resample "$DATA/atlases/hcpex/HCPEx.nii.gz" --interpolation nearest --out "$WORK/atlas.nii.gz"
$N images --corpus "$WORK/train.corpus" --atlas "$WORK/atlas.nii.gz" --labels \
    --out "$WORK/images.npy" --device cpu --threads $THREADS

# 3. Text features: title and abstract of each article.
$N embed --model "$MODEL" --corpus "$WORK/train.corpus" --section title,abstract \
    --out "$WORK/text-$TEXT_MODEL.npy" --device cpu --threads $THREADS

# 4. CLIP, cross-validated on the first 5 outer folds of 1,000 articles (one validation fold
#    each), the image features computed from the corpus and (with AUGMENT) drawn anew each
#    epoch; the model kept is the one of lowest validation loss. The README's retrieval figures
#    come from all 19 outer folds (the command is there).
AUG=(); [ -n "$AUGMENT" ] && AUG=(--augment "$AUGMENT")
$N train --text "$WORK/text-$TEXT_MODEL.npy" --corpus "$WORK/train.corpus" \
    --atlas "$WORK/atlas.nii.gz" --labels "${AUG[@]}" \
    --cv --fold-size 1000 --outer-folds 5 --inner-folds 1 --seed 0 \
    --metrics "$WORK/cv-$TEXT_MODEL.csv" --out "$WORK/model-$TEXT_MODEL.safetensors" \
    --device cpu --threads $THREADS

# 5. The vocabularies and priors, with the same text model.
for set in full reduced; do
    flag=""; [ "$set" = reduced ] && flag="--reduced"
    $N vocab --ontology "$DATA/cogat" $flag --model "$MODEL" \
        --documents "$WORK/text-$TEXT_MODEL.npy" --out "$WORK/vocab-$set-$TEXT_MODEL" \
        --device cpu --threads $THREADS
done

# 6. Ship.
cp "$WORK/model-$TEXT_MODEL.safetensors" "$OUT/model.safetensors"
cp "$WORK/atlas.nii.gz" "$OUT/atlas.nii.gz"
cp "$WORK/cv-$TEXT_MODEL.csv" "$OUT/cv_metrics.csv"
rm -rf "$OUT/ontology"
mkdir -p "$OUT/ontology/cognitive_atlas_dump" "$OUT/ontology/reduced"
for f in TaskCollection.json ConceptCollection.json AssertionCollection.json \
         ConceptClassCollection.json LICENSE README.md; do
    cp "$DATA/cogat/cognitive_atlas_dump/$f" "$OUT/ontology/cognitive_atlas_dump/"
done
for f in cogatlas_tasks_concepts_bertrand_mini.csv cogatlas_concepts_categories_mapping.json \
         concepts.json; do
    cp "$DATA/cogat/reduced/$f" "$OUT/ontology/reduced/"
done
for set in full reduced; do
    mkdir -p "$OUT/vocabulary-$set"
    cp "$WORK/vocab-$set-$TEXT_MODEL"/vocabulary.txt "$WORK/vocab-$set-$TEXT_MODEL"/vocabulary_emb.npy \
       "$WORK/vocab-$set-$TEXT_MODEL"/vocabulary_prior.npy "$OUT/vocabulary-$set/"
done
( cd "$OUT" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | xargs sha256sum > SHA256SUMS )
echo "assets in $OUT:" && cat "$OUT/SHA256SUMS"
