"""The Python side of `cargo xtask bench` (sentence-transformers + torch, fixed thread count).

usage:
  bench.py encode MODEL_DIR SENTENCES.txt BATCH   -> {"encode_s": ...} (after a warm-up)
  bench.py cold MODEL_DIR                         -> prints the first embedding values
  bench.py train MODEL_DIR DATA.jsonl STEPS       -> {"step_ms": [...]} forward+backward+AdamW,
                                                     encoder + two classification heads,
                                                     batch 32, 64 tokens
  bench.py matmul N PRECISION                     -> {"gflop_per_s": ...} best of 5 N×N products
                                                     (fp32 or bf16), as `st info --matmul-peak`
"""
import json
import os
import sys
import time

threads = int(os.environ.get("ST_BENCH_THREADS", "2"))


def encode(model_dir, path, batch):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    sentences = [line.rstrip("\n") for line in open(path, encoding="utf-8")]
    model.encode(sentences[:batch], batch_size=batch)
    start = time.perf_counter()
    model.encode(sentences, batch_size=batch)
    print(json.dumps({"encode_s": time.perf_counter() - start, "sentences": len(sentences)}))


def cold(model_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    print(model.encode(["hello world"])[0][:4].tolist())


def train(model_dir, path, steps):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 64
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    tasks = sorted({t for r in rows for t in r["labels"]})
    labels = {t: sorted({r["labels"][t] for r in rows}) for t in tasks}
    transformer = model[0]
    dim = transformer.get_word_embedding_dimension()
    heads = torch.nn.ModuleDict({t: torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(dim, len(labels[t])))
                                 for t in tasks})
    params = list(transformer.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5, eps=1e-8, weight_decay=0.01)
    transformer.train(); heads.train()
    times = []
    for step in range(steps):
        batch = [rows[(step * 32 + i) % len(rows)] for i in range(32)]
        start = time.perf_counter()
        features = model.tokenize([r["text"] for r in batch])
        out = transformer(dict(features))
        mask = features["attention_mask"].unsqueeze(-1).float()
        pooled = (out["token_embeddings"] * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        loss = sum(torch.nn.functional.cross_entropy(
            heads[t](pooled), torch.tensor([labels[t].index(r["labels"][t]) for r in batch])) for t in tasks)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"step_ms": times}))


def matmul(n, precision):
    import torch
    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    times = []
    for run in range(7):
        start = time.perf_counter()
        a @ b
        if run >= 2:  # the first two warm caches and kernel selection up
            times.append(time.perf_counter() - start)
    print(json.dumps({"n": n, "precision": precision, "seconds": min(times),
                      "gflop_per_s": 2 * n ** 3 / min(times) / 1e9}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "encode":
        encode(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "cold":
        cold(sys.argv[2])
    elif cmd == "matmul":
        matmul(int(sys.argv[2]), sys.argv[3])
    elif cmd == "train":
        train(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
