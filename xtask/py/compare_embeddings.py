"""Checks that Python sentence-transformers loads a model folder and embeds like `st encode`.

usage: compare_embeddings.py MODEL_DIR ST_JSONL   (ST_JSONL: `st encode` output for some texts)
exits non-zero unless every embedding has cosine >= 0.9999 with Python's.
"""
import json
import sys

import numpy as np
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(sys.argv[1], device="cpu")
rows = [json.loads(line) for line in open(sys.argv[2], encoding="utf-8")]
ours = np.array([r["embedding"] for r in rows], dtype=np.float64)
theirs = model.encode([r["text"] for r in rows]).astype(np.float64)
cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
worst = float(cos.min())
print(json.dumps({"sentences": len(rows), "min_cosine": worst, "max_abs_diff": float(np.abs(ours - theirs).max())}))
sys.exit(0 if worst >= 0.9999 else 1)
