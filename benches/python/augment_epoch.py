#!/usr/bin/env python
"""Python reference timing of one augmented epoch's image features (for BENCHMARKS.md).

What a researcher would write to train on jittered peaks with NiMARE 0.22.1: every epoch,
move each peak by N(0, sigma^2) mm per axis and drop it with probability p (numpy), give the
jittered coordinates to the Dataset, run ``MKDAKernel(r=10).transform(dset,
return_type="sparse")`` (NiMARE's fastest MKDA path) and project the maps onto the atlas
(the least squares of ``image_features.py``: X^T y, then a Cholesky solve). The Dataset is
built once, outside the timing; only the per-epoch work is timed. 2 threads.

The niclip figure beside it is ``niclip train --corpus ... --augment jitter:sigma=4,dropout:p=0.1``
(the feature part of an epoch, which the training log times), on the same corpus and atlas.

Run from the repository root with the reference venv (nimare==0.22.1, nilearn==0.13.1)::

    ~/.cache/niclip-ref/bin/python benches/python/augment_epoch.py [--shared ../shared/data]
        [--atlas ATLAS_ON_2MM_GRID.nii.gz] [--epochs 2]
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "2"

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def projection(atlas_path, mask):
    """The atlas's support rows X and the Cholesky factor of X^T X (set up once)."""
    import nibabel as nib
    import scipy.linalg as sla

    atlas = np.asanyarray(nib.load(atlas_path).dataobj)
    if atlas.ndim == 3:  # a label atlas: one indicator column per label
        labels = np.unique(atlas[atlas > 0])
        A = (atlas[mask][:, None] == labels[None, :]).astype(np.float32)
    else:
        A = atlas[mask].astype(np.float32)
    support = np.flatnonzero(np.any(A != 0, axis=1))
    X = np.ascontiguousarray(A[support])
    G = X.T @ X
    G[np.diag_indices_from(G)] += np.float32(1e-6)
    return support, X, sla.cho_factor(G, lower=False, check_finite=False)


def epoch(dset, coords, rng, sigma, p, support, X, cf):
    """One augmented epoch's features: jitter + dropout, MKDA, projection."""
    import scipy.linalg as sla
    from nimare.meta.kernel import MKDAKernel

    keep = rng.random(len(coords)) >= p
    c = coords[keep].copy()
    for axis in ("x", "y", "z"):
        c[axis] = c[axis] + rng.normal(0.0, sigma, len(c))
    # NiMARE maps mm to voxels when the coordinates are set; redo it as the Dataset does.
    ijk = np.round(np.c_[c["x"], c["y"], c["z"], np.ones(len(c))] @ np.linalg.inv(
        dset.masker.mask_img.affine).T)[:, :3].astype(int)
    c[["i", "j", "k"]] = ijk
    dset.coordinates = c
    ma = MKDAKernel(r=10).transform(dset, return_type="sparse").tocsr()[:, support]
    out = np.empty((ma.shape[0], X.shape[1]), dtype=np.float32)
    for b0 in range(0, ma.shape[0], 1024):
        xty = np.asarray(ma[b0 : b0 + 1024] @ X)
        out[b0 : b0 + 1024] = sla.cho_solve(cf, xty.T, check_finite=False).T
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument(
        "--atlas", default=str(REPO / "tests" / "fixtures" / "brain" / "atlas_gauss512_2mm.nii.gz")
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--n", type=int, default=0, help="only the first N studies (a smoke test)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("nimare").setLevel(logging.ERROR)

    import nimare
    from nimare.dataset import Dataset
    from nimare.io import convert_neurosynth_to_dict

    ns = Path(args.shared) / "corpus" / "neurosynth"
    d = convert_neurosynth_to_dict(
        str(ns / "data-neurosynth_version-7_coordinates.tsv.gz"),
        str(ns / "data-neurosynth_version-7_metadata.tsv.gz"),
    )
    dset = Dataset(d, target="mni152_2mm")
    if args.n:
        dset = dset.slice(dset.ids[: args.n])
    coords = dset.coordinates.copy()
    mask = np.asanyarray(dset.masker.mask_img.dataobj).astype(bool)
    support, X, cf = projection(args.atlas, mask)
    rng = np.random.default_rng(0)
    epoch(dset.slice(dset.ids[:5]), coords[coords["id"].isin(dset.ids[:5])], rng, 1, 0, support, X, cf)
    times = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        f = epoch(dset, coords, rng, args.sigma, args.p, support, X, cf)
        times.append(time.perf_counter() - t0)
    print(f"NiMARE {nimare.__version__}, numpy {np.__version__}, python "
          f"{platform.python_version()}, 2 threads; {len(dset.ids):,} studies, "
          f"{len(coords):,} peaks, atlas {X.shape[1]} maps, features {f.shape}")
    print(f"augmented epoch (jitter sigma={args.sigma}, dropout p={args.p}, MKDA, projection): "
          f"median {np.median(times):.2f} s over {len(times)} epochs "
          f"({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
