"""Python reference timings for `niclip embed` (BENCHMARKS.md, text section).

SmolLM2-135M-Instruct Q4_1 GGUF through transformers (float32, torch CPU, 2 threads): model load
(dequantizing the GGUF), and forward passes of batches of 8 x 512 tokens (the abstracts of
tests/fixtures/text/smollm_abstracts.txt, concatenated and cut into 512-token chunks);
all-MiniLM-L6-v2 sentence-transformers encode() of the 200 titles of minilm_titles.txt.

Run: ~/.cache/niclip-ref/bin/python benches/python/text_embed.py
"""

import os
import time
from pathlib import Path

import torch

torch.set_num_threads(2)
MODELS = Path.home() / ".cache/niclip/models"
SMOLLM = Path(os.environ.get("NICLIP_SMOLLM_GGUF", MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MINILM = Path(os.environ.get("NICLIP_MINILM_DIR", MODELS / "all-MiniLM-L6-v2"))
FX = Path(__file__).resolve().parents[2] / "tests/fixtures/text"


def smollm(batches=2):
    from transformers import AutoModel, AutoTokenizer

    t = time.perf_counter()
    model = AutoModel.from_pretrained(SMOLLM.parent, gguf_file=SMOLLM.name, dtype=torch.float32).eval()
    load = time.perf_counter() - t
    tok = AutoTokenizer.from_pretrained(SMOLLM.parent, gguf_file=SMOLLM.name)
    ids = [i for a in (FX / "smollm_abstracts.txt").read_text().splitlines() for i in tok(a).input_ids]
    x = torch.tensor(ids[: batches * 8 * 512]).view(batches, 8, 512)
    with torch.no_grad():
        model(x[0, :1, :64])  # warm-up
        t = time.perf_counter()
        for b in x:
            model(b).last_hidden_state
        secs = time.perf_counter() - t
    n = batches * 8 * 512
    print(f"SmolLM2-135M Q4_1: load {load:.2f} s; {n} tokens in {secs:.2f} s = {n / secs:.0f} tokens/s (8 x 512 batches)")


def minilm():
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(MINILM), device="cpu")
    titles = (FX / "minilm_titles.txt").read_text().splitlines()
    st.encode(titles[:8])
    t = time.perf_counter()
    st.encode(titles, batch_size=64)
    secs = time.perf_counter() - t
    print(f"all-MiniLM-L6-v2: 200 titles encode() in {secs * 1000:.0f} ms")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if SMOLLM.is_file():
        smollm()
    if MINILM.is_dir():
        minilm()
