#!/usr/bin/env python
"""Python reference timing of the image-feature pipeline (for BENCHMARKS.md).

"The best Python path": NiMARE 0.22.1 MKDA on the whole Neurosynth v7 corpus, then a
braindec-style projection of the modeled-activation maps onto a 512-component continuous
atlas with a Cholesky solve. numpy/scipy only (no torch), 2 threads.

Steps timed separately:

(i)   building the NiMARE Dataset: ``nimare.io.convert_neurosynth_to_dict`` (reads the two
      TSVs, groups the peaks) + ``nimare.dataset.Dataset(d, target="mni152_2mm")``. This is
      exactly NiMARE's ``convert_neurosynth_to_dataset``: all 14,371 studies are used; the 2,335
      TAL studies are converted with ``nimare.utils.tal2mni`` by the Dataset, the 1,832
      UNKNOWN-space studies are kept as given (NiMARE logs a warning and applies no transform).
(ii)  ``MKDAKernel(r=10).transform(dset, return_type="sparse")``: NiMARE's fastest MKDA path,
      a study x masked-voxel CSR matrix (float32, NiMARE's C-order mask enumeration).
      NiMARE's numba helpers are compiled before timing (warm-up on 5 studies).
(iii) projection onto the 512-Gaussian atlas ``tests/fixtures/brain/atlas_gauss512_2mm.nii.gz``
      (run ``tests/fixtures/make_brain_fixtures.py`` first):
      set-up  X = masked atlas rows with any non-zero (support voxels x 512, float32),
              G = X^T X + 1e-6 I, ``scipy.linalg.cho_factor``;
      solve   per batch of maps: beta = cho_solve(G, X^T y), y = the sparse MA rows restricted
              to the support voxels (scipy.sparse products).

Requirements: the niclip reference venv (nimare==0.22.1, nilearn==0.13.1, numpy, scipy,
nibabel, pandas). Run from the repository root::

    ~/.cache/niclip-ref/bin/python benches/python/image_features.py [--shared ../shared/data]
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "2"

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BATCH = 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument(
        "--atlas", default=str(REPO / "tests" / "fixtures" / "brain" / "atlas_gauss512_2mm.nii.gz")
    )
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument(
        "--kernel", choices=["mkda", "kda", "ale"], default="mkda",
        help="MKDAKernel(r=10) (default), KDAKernel(r=10) or ALEKernel(fwhm=10)",
    )
    args = ap.parse_args()
    shared = Path(args.shared)
    ns = shared / "corpus" / "neurosynth"
    coords_file = ns / "data-neurosynth_version-7_coordinates.tsv.gz"
    meta_file = ns / "data-neurosynth_version-7_metadata.tsv.gz"

    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    logging.getLogger("nimare").setLevel(logging.ERROR)

    import nibabel as nib
    import nimare
    import scipy
    import scipy.linalg as sla
    from nimare.dataset import Dataset
    from nimare.io import convert_neurosynth_to_dict
    from nimare.meta.kernel import ALEKernel, KDAKernel, MKDAKernel

    kernel = {"mkda": lambda: MKDAKernel(r=10), "kda": lambda: KDAKernel(r=10),
              "ale": lambda: ALEKernel(fwhm=10)}[args.kernel]

    # warm-up: compile NiMARE's numba helpers outside the timings
    tiny = {
        str(i): {"contrasts": {"1": {"coords": {"space": "MNI", "x": [0.0, 30.0] * 30,
                                                 "y": [0.0, -20.0] * 30, "z": [10.0, 20.0] * 30}}}}
        for i in range(5)
    }
    kernel().transform(Dataset(tiny, target="mni152_2mm"), return_type="sparse")

    t = {}
    # (i) Dataset
    t0 = time.perf_counter()
    d = convert_neurosynth_to_dict(str(coords_file), str(meta_file))
    t1 = time.perf_counter()
    dset = Dataset(d, target="mni152_2mm")
    t2 = time.perf_counter()
    t["dict"] = t1 - t0
    t["dataset"] = t2 - t1
    n_studies = len(dset.ids)
    n_peaks = len(dset.coordinates)
    del d

    # (ii) MKDA
    t0 = time.perf_counter()
    ma = kernel().transform(dset, return_type="sparse")
    t["mkda"] = time.perf_counter() - t0
    ma = ma.tocsr()
    assert ma.shape[0] == n_studies

    # (iii) projection
    mask_img = nib.load(shared / "mni" / "tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz")
    mask = np.asanyarray(mask_img.dataobj).astype(bool)
    assert ma.shape[1] == int(mask.sum())
    atlas_img = nib.load(args.atlas)
    atlas = np.asanyarray(atlas_img.dataobj)  # loaded (decompressed) outside the timing
    assert np.allclose(atlas_img.affine, mask_img.affine) and atlas.shape[:3] == mask.shape

    t0 = time.perf_counter()
    A = atlas[mask]  # mask voxels in C order = NiMARE's column order, [n_mask, 512]
    support = np.flatnonzero(np.any(A != 0, axis=1))
    X = np.ascontiguousarray(A[support], dtype=np.float32)  # [n_support, 512]
    G = X.T @ X
    G[np.diag_indices_from(G)] += np.float32(1e-6)
    cf = sla.cho_factor(G, lower=False, check_finite=False)
    t["setup"] = time.perf_counter() - t0
    del A

    t0 = time.perf_counter()
    ma_sup = ma[:, support]  # sparse column restriction to the support voxels
    t["restrict"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    betas = np.empty((n_studies, X.shape[1]), dtype=np.float32)
    for b0 in range(0, n_studies, args.batch):
        y = ma_sup[b0 : b0 + args.batch]
        xty = np.asarray(y @ X)  # [b, 512] = (X^T y)^T
        betas[b0 : b0 + args.batch] = sla.cho_solve(cf, xty.T, check_finite=False).T
    t["solve"] = time.perf_counter() - t0

    # cross-check (untimed): rows of the fixture studies vs nilearn's float32 lstsq fixture
    check = ""
    fx = REPO / "tests" / "fixtures" / "brain"
    if (fx / "proj_ref_gauss512.npy").exists() and (fx / "mkda_ids.txt").exists():
        ref = np.load(fx / "proj_ref_gauss512.npy")[:19]
        ids19 = [f"{line.strip()}-1" for line in open(fx / "mkda_ids.txt")][:19]
        pos = {k: i for i, k in enumerate(np.unique(dset.coordinates["id"].to_numpy()))}
        ours = betas[[pos[k] for k in ids19]].astype(np.float64)
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        check = f"max |beta - nilearn fixture| / max|beta| over 19 fixture studies: {rel:.2e}"

    t_i = t["dict"] + t["dataset"]
    t_iii = t["setup"] + t["restrict"] + t["solve"]
    total = t_i + t["mkda"] + t_iii
    nnz = ma.nnz
    rows = [
        ("(i)   Dataset: read TSVs + convert_neurosynth_to_dict", t["dict"]),
        ("(i)   Dataset: Dataset(d, target='mni152_2mm')", t["dataset"]),
        ("(i)   Dataset total", t_i),
        (f"(ii)  {args.kernel.upper()} kernel .transform(return_type='sparse')", t["mkda"]),
        ("(iii) atlas set-up: X, G = XtX + 1e-6 I, cho_factor", t["setup"]),
        ("(iii) restrict MA columns to atlas support", t["restrict"]),
        (f"(iii) XtY + cho_solve, batches of {args.batch}", t["solve"]),
        ("(iii) projection total", t_iii),
        ("total (i)+(ii)+(iii)", total),
    ]
    w = max(len(r[0]) for r in rows)
    print()
    print(f"niclip Python reference: image features on Neurosynth v7 "
          f"(nimare {nimare.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"python {platform.python_version()}, torch-free, 2 threads)")
    print(f"studies: {n_studies:,}   peaks: {n_peaks:,}   (TAL -> MNI via tal2mni inside Dataset; "
          f"UNKNOWN kept as given)")
    print(f"MA matrix: {ma.shape[0]:,} x {ma.shape[1]:,} CSR {ma.dtype}, nnz {nnz:,} "
          f"(mean {nnz / n_studies:,.0f} voxels/study); atlas support {len(support):,} voxels x "
          f"{X.shape[1]}")
    print()
    print(f"| {'step'.ljust(w)} | seconds |")
    print(f"|{'-' * (w + 2)}|--------:|")
    for name, sec in rows:
        print(f"| {name.ljust(w)} | {sec:7.2f} |")
    print()
    print(f"MKDA per 1,000 studies:             {t['mkda'] / n_studies * 1000:8.3f} s")
    print(f"projection per map (solve only):    {t['solve'] / n_studies * 1e3:8.4f} ms")
    print(f"projection per map (incl. set-up):  {t_iii / n_studies * 1e3:8.4f} ms")
    if check:
        print(check)
    print(f"threads: OMP/OPENBLAS/MKL/NUMBA = 2; cpu: {os.cpu_count()} logical; "
          f"{platform.processor() or platform.machine()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
