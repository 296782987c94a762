"""PyTorch reference for `st train`: the same model, data, hyperparameters and seed, in plain
PyTorch + sentence-transformers, so accuracies can be compared on the same machine.

usage: train_reference.py CONFIG.json     (the train_config.json that `st train` writes)
prints one JSON object: {"task": {"accuracy": ...}, ...} plus timing.

What it mirrors: mean pooling without normalization feeding dropout(0.1) -> linear heads;
AdamW (eps 1e-8, weight decay 0.01, none on biases/LayerNorm); per-group rates (encoder base,
heads head_lr); linear warm-up then linear decay; global grad-norm clipping; one source per
batch, sampled proportionally to size; loss = sum of the tasks present in the batch.
Random streams differ from st's, so expect agreement within noise, not bit equality.
"""
import json
import math
import random
import sys
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)


def read(spec):
    path, fmt, limit = spec["path"], spec.get("format"), spec.get("limit")
    rows = []
    if fmt == "sst2" or path.endswith(".tsv"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i == 0:
                    continue
                text, label = line.rstrip("\n").rsplit("\t", 1)
                rows.append((text.strip(), {"sentiment": "positive" if label.strip() == "1" else "negative"}))
    elif fmt in ("trec", None) and path.endswith(".label"):
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.strip():
                    label, q = line.rstrip("\n").split(" ", 1)
                    rows.append((q.strip(), {"topic": label.split(":")[0]}))
    elif path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows.append((r["text"], r["labels"]))
    else:
        raise SystemExit(f"train_reference.py: unsupported dataset {path}")
    return rows[:limit] if limit else rows


def main():
    cfg = json.load(open(sys.argv[1]))
    seed = cfg.get("seed", 42)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    sources = [read(s) for s in cfg["train"]]
    evals = [r for s in cfg["eval"] for r in read(s)]
    tasks = sorted({t for src in sources for _, labels in src for t in labels})
    labels = {t: sorted({l[t] for src in sources for _, l in src if t in l}) for t in tasks}

    model = SentenceTransformer(cfg["model"] if not cfg["model"].startswith("sentence-transformers/")
                                else sys.argv[2], device="cpu")
    model.max_seq_length = cfg.get("max_seq_length", 128)
    transformer = model[0]
    hidden = transformer.get_word_embedding_dimension()
    heads = torch.nn.ModuleDict({t: torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(hidden, len(labels[t])))
                                 for t in tasks})

    lr = cfg["lr"]["base"]
    head_lr = cfg["lr"].get("head_lr") or lr
    wd = cfg.get("weight_decay", 0.01)
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n
    groups = [
        {"params": [p for n, p in transformer.named_parameters() if not no_decay(n)], "lr": lr, "weight_decay": wd},
        {"params": [p for n, p in transformer.named_parameters() if no_decay(n)], "lr": lr, "weight_decay": 0.0},
        {"params": [p for n, p in heads.named_parameters() if not no_decay(n)], "lr": head_lr, "weight_decay": wd},
        {"params": [p for n, p in heads.named_parameters() if no_decay(n)], "lr": head_lr, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, eps=cfg.get("adam_epsilon", 1e-8))
    bs = cfg.get("batch_size", 32)
    sizes = [len(s) for s in sources]
    steps_per_epoch = max(1, math.ceil(sum(sizes) / bs))
    total = cfg.get("max_steps") or steps_per_epoch * cfg.get("epochs", 3)
    warmup = round(cfg.get("warmup_ratio", 0.1) * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    orders = [[] for _ in sources]

    def pool(texts, train):
        features = model.tokenize(texts)
        out = transformer(dict(features))
        tok, mask = out["token_embeddings"], features["attention_mask"].unsqueeze(-1).float()
        return (tok * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    transformer.train(); heads.train()
    start = time.time()
    for step in range(total):
        s = random.choices(range(len(sources)), weights=sizes)[0]
        if len(orders[s]) < bs:
            perm = list(range(sizes[s])); random.shuffle(perm); orders[s] += perm
        idx, orders[s] = orders[s][:bs], orders[s][bs:]
        batch = [sources[s][i] for i in idx]
        emb = pool([t for t, _ in batch], True)
        loss = 0.0
        for t in tasks:
            rows = [i for i, (_, l) in enumerate(batch) if t in l]
            if rows:
                target = torch.tensor([labels[t].index(batch[i][1][t]) for i in rows])
                loss = loss + torch.nn.functional.cross_entropy(heads[t](emb[rows]), target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(transformer.parameters()) + list(heads.parameters()),
                                       cfg.get("max_grad_norm") or 1e9)
        opt.step(); sched.step()
    train_s = time.time() - start

    transformer.eval(); heads.eval()
    correct = {t: [0, 0] for t in tasks}
    with torch.no_grad():
        for i in range(0, len(evals), 64):
            chunk = evals[i:i + 64]
            emb = pool([t for t, _ in chunk], False)
            for t in tasks:
                rows = [k for k, (_, l) in enumerate(chunk) if t in l]
                if rows:
                    pred = heads[t](emb[rows]).argmax(-1).tolist()
                    for k, p in zip(rows, pred):
                        correct[t][0] += labels[t][p] == chunk[k][1][t]
                        correct[t][1] += 1
    result = {t: {"accuracy": c / n, "n": n} for t, (c, n) in correct.items() if n}
    result["_train_seconds"] = train_s
    result["_steps"] = total
    print(json.dumps(result))


if __name__ == "__main__":
    main()
