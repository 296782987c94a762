"""Padding and batching table of docs/design-choices.md: reads the folder its rerun commands
write (sorted.json/npy, unsorted.jsonl + chunk-*.npy, single.json/npy) and prints the rows."""
import json, sys, glob, numpy as np
w = sys.argv[1]
rows = [json.loads(l) for l in open(f"{w}/unsorted.jsonl")]
u_time = sum(r["encode_s"] for r in rows); u_pad = sum(r["padded_tokens"] for r in rows)
s = json.load(open(f"{w}/sorted.json")); one = json.load(open(f"{w}/single.json"))
tok = s["tokens"]
ref = np.load(f"{w}/single.npy")
def cmp(e):
    cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
    return float(np.abs(e - ref).max()), float(cos.min())
unsorted = np.concatenate([np.load(f) for f in sorted(glob.glob(f"{w}/chunk-*.npy"))])
for name, t, pad, e in [("batch 1 (no padding)", one["encode_s"], one["padded_tokens"], ref),
                        ("batch 32, input order", u_time, u_pad, unsorted),
                        ("batch 32, sorted by length (st's default)", s["encode_s"], s["padded_tokens"], np.load(f"{w}/sorted.npy"))]:
    d, c = cmp(e)
    print(f"| {name} | {pad:,} ({pad / tok:.2f}×) | {t:.2f} | {2000 / t:.0f} | {d:.1e} | {c:.7f} |")
