"""The authors'-style Python decode, timed: braindec's CognitiveAtlas, ImageEmbedding (volume
path: image resampled to the atlas, float32 Gram solve) and image_to_labels_hierarchical, as
rewritten in tests/fixtures/make_decode_fixtures.py, with the fixture model, vocabulary and
prior, the reduced ontology and the Harvard-Oxford atlas.

    ~/.cache/niclip-ref/bin/python benches/python/decode.py MAP [N]

decodes MAP N times (default 1) in one process, loading everything once, and prints the time
of the set-up, per map and the whole run (the process's own start and imports included).
"""

import time

T0 = time.perf_counter()
import json  # noqa: E402
import os.path as op  # noqa: E402
import sys  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from nilearn.image import resample_to_img  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = op.dirname(op.dirname(op.dirname(op.abspath(__file__))))
sys.path.insert(0, op.join(ROOT, "tests", "fixtures"))
import make_decode_fixtures as ref  # noqa: E402

torch.set_num_threads(2)


def main():
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    t_imports = time.perf_counter() - T0
    t = time.perf_counter()
    fx = op.join(ROOT, "tests", "fixtures", "decode")
    sd = load_file(op.join(fx, "model.safetensors"))
    model = ref.CLIP(sd["text_model.model.0.projection.weight"].shape[1], sd["image_model.model.0.fc.weight"].shape[0])
    model.load_state_dict(sd)
    model.eval()
    vocabulary = [line.rstrip("\n") for line in open(op.join(fx, "vocabulary.txt"))]
    emb = np.load(op.join(fx, "vocabulary_emb.npy"))
    prior = np.load(op.join(fx, "vocabulary_prior.npy"))
    dump = op.join(ref.COGAT, "cognitive_atlas_dump")
    tasks = json.load(open(op.join(dump, "TaskCollection.json")))["entries"]
    concepts = json.load(open(op.join(dump, "ConceptCollection.json")))["entries"]
    import pandas as pd

    reduced = pd.DataFrame({"task": vocabulary, "concept_1": np.nan, "concept_2": np.nan, "concept_3": np.nan})
    cogatlas = ref.CognitiveAtlas(tasks, concepts, reduced, {})
    atlas_img = nib.load(ref.ATLAS)
    labels = atlas_img.get_fdata()
    maps_data = np.stack([(labels == v).astype(np.float32) for v in np.unique(labels[labels > 0])], axis=-1)
    # braindec caches the atlas's Gram matrix (ImageEmbedding._get_maps_data).
    gram = np.tensordot(maps_data, maps_data, axes=([0, 1, 2], [0, 1, 2])).astype(np.float32)
    gram += np.eye(gram.shape[0], dtype=np.float32) * 1e-6
    t_setup = time.perf_counter() - t

    per = []
    for _ in range(n):
        t = time.perf_counter()
        img = nib.load(path)
        if img.shape[:3] != atlas_img.shape or not np.allclose(img.affine, atlas_img.affine):
            img = resample_to_img(img, atlas_img, interpolation="linear", force_resample=True, copy_header=True)
        data = np.nan_to_num(img.get_fdata(dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)[..., None]
        xty = np.tensordot(maps_data, data, axes=([0, 1, 2], [0, 1, 2])).astype(np.float32)
        feats = torch.from_numpy(np.linalg.solve(gram, xty).T).float()
        ref.image_to_labels_hierarchical(feats, model, vocabulary, emb, prior, cogatlas, 10, None)
        per.append(time.perf_counter() - t)
    total = time.perf_counter() - T0
    print(
        f"{op.basename(path)}: imports {t_imports:.2f} s, set-up {t_setup:.2f} s, "
        f"per map median {np.median(per) * 1e3:.1f} ms (min {np.min(per) * 1e3:.1f}), "
        f"{n} maps, whole run {total:.2f} s"
    )


if __name__ == "__main__":
    main()
