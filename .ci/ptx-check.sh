#!/usr/bin/env bash
# Compiles every kernels/*.cu to PTX for sm_90 with CUDA 13.0's nvcc (from PyPI, installed into
# a venv cached under ~/.cache; NICLIP_NVCC_READY=1 uses the nvcc on PATH) and assembles it with ptxas, one line per
# kernel with its registers, spills and shared memory; fails on any error. No GPU needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
# CUDA 13.0 emits PTX ISA 9.0, which driver 580 accepts; newer wheels emit PTX it rejects.
# The same pins as shared/tools/install-nvcc.sh; nvidia-cuda-cccl provides <nv/target>.
venv="${NICLIP_NVCC_VENV:-$HOME/.cache/niclip-nvcc}"
if [ "${NICLIP_NVCC_READY:-0}" != 1 ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
  site="$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
  if [ ! -x "$site/nvidia/cu13/bin/nvcc" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check \
      nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 >&2
  fi
  export CUDA_HOME="$site/nvidia/cu13" PATH="$site/nvidia/cu13/bin:$PATH"
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
