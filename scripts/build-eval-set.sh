#!/usr/bin/env bash
# Builds an evaluation set with known answers for `niclip eval decoding` (issue 31), from
# ../shared/data, deterministically (run it twice: the files are byte-identical).
#
#   bash scripts/build-eval-set.sh                  # writes target/eval-set/
#   OUT=/tmp/eval bash scripts/build-eval-set.sh
#   niclip eval decoding --truth target/eval-set/truth.tsv [--reduced] [--baseline B.safetensors]
#
# Writes into OUT:
#   maps/<study>.nii.gz   one MKDA modeled map (radius 10 mm, the default) per study of the
#                         NiMARE n-back vs flanker studyset (320 studies). Per study, not per
#                         analysis: the model was trained on one map per article (all its
#                         peaks), the studyset's 906 analyses are often tables of one
#                         experiment (several per study, sharing its text), and separate maps
#                         of one study would count one answer several times in the null.
#   examples/             the real maps of examples/truth.tsv, copied.
#   truth.tsv             each map with the Cognitive Atlas task, concept and domain of its
#                         class (the studyset's `comparison_task`: every analysis of a study
#                         has the same one), spelled as the decoder spells them (step 4).
#   train-matches.tsv     the articles of the default model's training corpus (Neurosynth v7
#                         ∪ NeuroQuery, as scripts/build-default-model.sh imports them) whose
#                         title matches a studyset title (case-insensitive, whitespace
#                         normalised): the model has seen these maps and texts.
#   train-exclude-ids.txt their ids, for `niclip corpus filter --exclude-ids` when training a
#                         model to evaluate on this set.
#   tune.tsv, test.tsv    truth.tsv split in two, stratified by task (the example maps in
#                         test.tsv): settings are chosen on tune.tsv and reported on test.tsv.
#   truth-unseen.tsv      truth.tsv's studyset maps whose study matches no training title (for
#                         models trained on the whole corpus, as the default is).
#   work/                 the corpora the above came from.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${NICLIP_SHARED_DATA:-../shared/data}"
OUT="${OUT:-target/eval-set}"
STUDYSET="$DATA/corpus/nimare/nback_vs_flanker_studyset_2026-07"
[ -d "$STUDYSET" ] || { echo "$STUDYSET: not found; set NICLIP_SHARED_DATA to the shared data folder" >&2; exit 1; }
W="$OUT/work"
mkdir -p "$W"
rm -rf "$OUT/maps" "$OUT/examples"
mkdir -p "$OUT/maps" "$OUT/examples"

# The binary wherever cargo puts it (CARGO_TARGET_DIR, .cargo/config), as cargo reports it.
N="$(cargo build --release --quiet --bin niclip --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)"
[ -x "$N" ] || { echo "could not find the niclip binary that cargo built" >&2; exit 1; }

# 1. The studyset, one corpus study per analysis with its labels in the metadata, exported.
$N corpus import --format studyset "$STUDYSET" --out "$W/analyses.corpus"
$N corpus export --format nimare "$W/analyses.corpus" --out "$W/analyses.json"

# 2. One contrast per study holding all its analyses' peaks (MNI, as exported), and the truth.
python3 - "$W/analyses.json" "$W/studies.json" "$W/studies.tsv" <<'EOF'
import json, sys
src, out_json, out_tsv = sys.argv[1:]
studies = json.load(open(src))
merged, rows = {}, []
for sid in sorted(studies):
    s = studies[sid]
    xyz, classes, title = ([], [], []), set(), None
    for cid in sorted(s["contrasts"]):
        c = s["contrasts"][cid]
        classes.add(c["metadata"]["comparison_task"])
        title = title or c["metadata"].get("title", "")
        for k, axis in enumerate("xyz"):
            xyz[k].extend(c["coords"][axis])
    if len(classes) != 1:
        sys.exit(f"{src}: study {sid} has analyses of classes {sorted(classes)}; "
                 "the studyset release should keep each study in one class")
    merged[sid] = {"contrasts": {"all": {
        "coords": {"space": "MNI", "x": xyz[0], "y": xyz[1], "z": xyz[2]},
        "metadata": {"title": title}}}}
    rows.append((sid, classes.pop(), title))
json.dump(merged, open(out_json, "w"), sort_keys=True)
with open(out_tsv, "w") as f:
    for r in rows:
        f.write("\t".join(x.replace("\t", " ").replace("\n", " ") for x in r) + "\n")
EOF
$N corpus import --format nimare "$W/studies.json" --out "$W/studies.corpus"

# 3. The modeled maps.
while IFS=$'\t' read -r sid _ _; do
    $N ma-map --corpus "$W/studies.corpus" --study "$sid" --out "$OUT/maps/$sid.nii.gz" \
        --device cpu --threads 2
done < "$W/studies.tsv"

# 4. truth.tsv. Names as the decoder spells them (a name it never outputs is a silent miss):
#    tasks and concepts as in assets/default/ontology, domains as braindec names the concept
#    classes. The flanker task is only in the full vocabulary (the reduced one has none, so its
#    flanker maps cannot be right at the task level); working memory and response conflict
#    (the flanker task's conflict concept) are both in class ctp_C4, Executive cognitive
#    control.
{
    printf 'path\ttask\tconcepts\tdomains\n'
    while IFS=$'\t' read -r sid class _; do
        case "$class" in
            n-back) printf 'maps/%s.nii.gz\tn-back task\tworking memory\tExecutive cognitive control\n' "$sid" ;;
            flanker) printf 'maps/%s.nii.gz\tEriksen flanker task\tresponse conflict\tExecutive cognitive control\n' "$sid" ;;
            *) echo "$W/studies.tsv: study $sid has class $class; expected n-back or flanker" >&2; exit 1 ;;
        esac
    done < "$W/studies.tsv"
    tail -n +2 examples/truth.tsv | while IFS=$'\t' read -r path rest; do
        cp "examples/$path" "$OUT/examples/"
        printf 'examples/%s\t%s\n' "$path" "$rest"
    done
} > "$OUT/truth.tsv"

# 5. Training articles whose title matches a studyset title.
JOIN="$DATA/corpus/labelbuddy/labelbuddy_documents_fulltext.jsonl.gz"
$N corpus import --format neurosynth "$DATA/corpus/neurosynth" --text-jsonl "$JOIN" --out "$W/neurosynth.corpus"
$N corpus import --format neuroquery "$DATA/corpus/neuroquery" --text-jsonl "$JOIN" --out "$W/neuroquery.corpus"
$N corpus merge "$W/neurosynth.corpus" "$W/neuroquery.corpus" --out "$W/train.corpus"
$N corpus export --format nimare "$W/train.corpus" --out "$W/train.json"
python3 - "$W/train.json" "$W/studies.tsv" "$OUT/train-matches.tsv" "$OUT/train-exclude-ids.txt" \
    "$OUT/truth.tsv" "$OUT/truth-unseen.tsv" <<'EOF'
import json, sys
train_json, studies_tsv, out_tsv, out_ids, truth, unseen = sys.argv[1:]
key = lambda t: " ".join(t.split()).casefold()
wanted = {}
for line in open(studies_tsv):
    sid, _, title = line.rstrip("\n").split("\t")
    if key(title):
        wanted.setdefault(key(title), []).append(sid)
train = json.load(open(train_json))
hits = []
for tid in sorted(train):
    for cid, c in sorted(train[tid]["contrasts"].items()):
        title = c.get("metadata", {}).get("title") or ""
        if key(title) in wanted:
            hits.append((f"{tid}-{cid}", ";".join(wanted[key(title)]), title))
with open(out_tsv, "w") as f:
    f.write("train_id\tstudyset_studies\ttitle\n")
    f.writelines("\t".join(h) + "\n" for h in hits)
with open(out_ids, "w") as f:
    f.writelines(h[0] + "\n" for h in hits)
matched = {s for h in hits for s in h[1].split(";")}
with open(unseen, "w") as f:
    lines = open(truth).readlines()
    f.write(lines[0])
    f.writelines(l for l in lines[1:] if l.startswith("maps/")
                 and l.split("\t")[0][len("maps/"):-len(".nii.gz")] not in matched)
print(f"{len(hits)} of {len(train)} training articles match a studyset title "
      f"({len(matched)} of {sum(len(v) for v in wanted.values())} studyset studies); "
      f"listed in {out_tsv}")
EOF
# 6. A split for choosing settings (tune.tsv) and reporting them (test.tsv): within each task,
# alternate studyset rows in truth.tsv's order; the example maps only in test.tsv.
awk -F'\t' -v tune="$OUT/tune.tsv" -v test="$OUT/test.tsv" '
    NR == 1 { print > tune; print > test; next }
    $1 ~ /^maps\// { n[$2]++; print > ((n[$2] % 2) ? tune : test); next }
    { print > test }
' "$OUT/truth.tsv"
echo "evaluation set in $OUT: $(($(wc -l < "$OUT/truth.tsv") - 1)) maps in truth.tsv" \
    "(tune.tsv $(($(wc -l < "$OUT/tune.tsv") - 1)), test.tsv $(($(wc -l < "$OUT/test.tsv") - 1)))"
