"""The Python side of `cargo xtask bench` (sentence-transformers + torch, fixed thread count).

usage:
  bench.py encode MODEL_DIR SENTENCES.txt BATCH [RUNTIME]
                                                  -> {"encode_s": ...} (after a warm-up);
                                                     RUNTIME: torch (default), onnx (ONNX
                                                     Runtime fp32) or onnx-int8 (its dynamic
                                                     int8 export); the onnx ones need
                                                     `onnx-export` first and the ONNX env
  bench.py onnx-export MODEL_DIR OUT_DIR          -> copies the model to OUT_DIR and writes
                                                     onnx/model.onnx and its dynamic int8
                                                     quantization (sentence-transformers'
                                                     export_dynamic_quantized_onnx_model)
  bench.py onnx-cosine OUT_DIR SENTENCES.txt      -> {"min_cosine": ...} of ONNX int8
                                                     embeddings to ONNX fp32 ones
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


# The int8 file `export_dynamic_quantized_onnx_model` writes: its config is named after the
# instruction set it targets, chosen from what this CPU has.
def onnx_int8_config():
    flags = open("/proc/cpuinfo").read()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def load(model_dir, runtime):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    if runtime == "torch":
        return SentenceTransformer(model_dir, device="cpu")
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    file_name = {"onnx": "onnx/model.onnx",
                 "onnx-int8": f"onnx/model_qint8_{onnx_int8_config()}.onnx"}[runtime]
    return SentenceTransformer(model_dir, device="cpu", backend="onnx",
                               model_kwargs={"file_name": file_name, "session_options": options,
                                             "provider": "CPUExecutionProvider"})


def encode(model_dir, path, batch, runtime="torch"):
    model = load(model_dir, runtime)
    sentences = [line.rstrip("\n") for line in open(path, encoding="utf-8")]
    model.encode(sentences[:batch], batch_size=batch)
    start = time.perf_counter()
    model.encode(sentences, batch_size=batch)
    print(json.dumps({"encode_s": time.perf_counter() - start, "sentences": len(sentences)}))


def onnx_export(model_dir, out_dir):
    import shutil
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(model_dir, out_dir)
    model = SentenceTransformer(out_dir, device="cpu", backend="onnx")  # exports onnx/model.onnx
    model.save_pretrained(out_dir)
    export_dynamic_quantized_onnx_model(model, onnx_int8_config(), out_dir)
    print(json.dumps({"onnx_dir": out_dir, "int8_config": onnx_int8_config()}))


def onnx_cosine(onnx_dir, path):
    import numpy as np
    sentences = [line.rstrip("\n") for line in open(path, encoding="utf-8")]
    full = load(onnx_dir, "onnx").encode(sentences, batch_size=32)
    int8 = load(onnx_dir, "onnx-int8").encode(sentences, batch_size=32)
    cos = (full * int8).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(int8, axis=1))
    print(json.dumps({"min_cosine": float(cos.min())}))


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
        encode(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
    elif cmd == "onnx-export":
        onnx_export(sys.argv[2], sys.argv[3])
    elif cmd == "onnx-cosine":
        onnx_cosine(sys.argv[2], sys.argv[3])
    elif cmd == "cold":
        cold(sys.argv[2])
    elif cmd == "matmul":
        matmul(int(sys.argv[2]), sys.argv[3])
    elif cmd == "train":
        train(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
