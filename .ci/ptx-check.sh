#!/usr/bin/env bash
# Compiles every kernels/*.cu to PTX for sm_90 with CUDA 13.0's nvcc (from PyPI, through
# ../shared/tools/install-nvcc.sh beside the checkout) and assembles it with ptxas, one line per
# kernel with its registers, spills and shared memory; fails on any error. No GPU needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
installer="$here/../../shared/tools/install-nvcc.sh"
if [ ! -f "$installer" ]; then
  echo "ptx-check: $installer not found: it lives in shared/tools/ beside the checkout;" \
       "or put CUDA 13.0's nvcc and ptxas on PATH and set NICLIP_NVCC_READY=1" >&2
  [ "${NICLIP_NVCC_READY:-0}" = 1 ] || exit 1
else
  eval "$(bash "$installer")"
fi
arch="${NICLIP_CUDA_ARCH:-sm_90}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob
kernels=("$repo"/kernels/*.cu)
if [ ${#kernels[@]} -eq 0 ]; then
  echo "ptx-check: no kernels/*.cu found" >&2
  exit 1
fi
fail=0
for cu in "${kernels[@]}"; do
  name="$(basename "$cu" .cu)"
  rel="kernels/$name.cu"
  if ! nvcc -ptx -arch="$arch" -std=c++17 -I "$repo/kernels" -o "$tmp/$name.ptx" "$cu" 2>"$tmp/$name.nvcc.log"; then
    echo "ptx FAILED (nvcc): $rel"
    sed 's/^/    /' "$tmp/$name.nvcc.log"
    fail=1
    continue
  fi
  if ! ptxas -v -arch="$arch" "$tmp/$name.ptx" -o /dev/null 2>"$tmp/$name.ptxas.log"; then
    echo "ptx FAILED (ptxas): $rel"
    sed 's/^/    /' "$tmp/$name.ptxas.log"
    fail=1
    continue
  fi
  # One summary per entry point: "name: N registers, S spill stores, L spill loads, B bytes smem".
  summary="$(awk '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
    /spill stores/ { st = $5; ld = $9 }
    /Used [0-9]+ registers/ {
      regs = $5; smem = "0"
      if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH - 11) }
      printf "%s%s %s regs, %s spill st, %s spill ld, %s B smem", sep, fn, regs, st, ld, smem; sep = "; "
    }' "$tmp/$name.ptxas.log")"
  warnings="$(cat "$tmp/$name.nvcc.log" "$tmp/$name.ptxas.log" | { grep -ci warning || true; })"
  echo "ptx ok: $rel ($arch; $summary; $warnings warnings)"
done
exit $fail
