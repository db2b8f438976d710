#!/usr/bin/env python
"""Python reference timing of one CLIP training epoch (for BENCHMARKS.md).

The authors' architecture in PyTorch (the modules of tests/fixtures/make_clip_fixtures.py):
14,000 random pairs, text width 576 and 4096, image width 512, batch 128 shuffled with the last
partial batch kept, dropout 0.5, AdamW(lr 5e-4, wd 0.1), CPU, 2 threads. One warm-up epoch,
then the median of 3 timed epochs (forward, backward, optimizer step; no validation).

    ~/.cache/niclip-ref/bin/python benches/python/clip_epoch.py [--dims 576 4096] [--epochs 3]
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "2"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
from make_clip_fixtures import CLIP  # noqa: E402


def epoch(model, opt, text, images, batch, gen):
    model.train()
    perm = torch.randperm(text.shape[0], generator=gen)
    for start in range(0, text.shape[0], batch):
        rows = perm[start : start + batch]
        loss = model(images[rows], text[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, nargs="+", default=[576, 4096])
    ap.add_argument("--n", type=int, default=14000)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d in a.dims:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        text = F.normalize(torch.randn(a.n, d), dim=-1)
        images = F.normalize(torch.randn(a.n, a.k), dim=-1)
        model = CLIP(d, a.k, dropout=0.5)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
        epoch(model, opt, text, images, 128, gen)
        times = []
        for _ in range(a.epochs):
            t0 = time.perf_counter()
            epoch(model, opt, text, images, 128, gen)
            times.append(time.perf_counter() - t0)
        print(f"text dim {d}: epoch {statistics.median(times):.3f} s (median of {a.epochs}: {', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    main()
