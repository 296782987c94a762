"""STS-B Spearman (cosine, ×100) of a sentence-transformers model in Python, for `cargo xtask e2e`
to compare `st eval sts` with on the same weights.

usage: sts_eval.py MODEL_DIR STS.csv   -> {"spearman_cosine": ..., "pairs": ...}

The file is read as `st eval sts` reads it: tab-separated, no quoting, the first 7 fields
(genre, file, year, id, score, sentence1, sentence2); some rows carry extra credit columns.
"""
import json
import sys

import numpy as np
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer


def main(model_dir, path):
    torch.set_num_threads(2)
    rows = [line.rstrip("\n").split("\t")[:7] for line in open(path, encoding="utf-8") if line.strip()]
    gold = np.array([float(r[4]) for r in rows])
    model = SentenceTransformer(model_dir, device="cpu")
    a = model.encode([r[5] for r in rows], batch_size=32, convert_to_numpy=True)
    b = model.encode([r[6] for r in rows], batch_size=32, convert_to_numpy=True)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(json.dumps({"spearman_cosine": 100 * spearmanr(cos, gold).statistic, "pairs": len(rows)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
