"""Python reference for st's pair training (issue #13): fine-tune a sentence-transformers model on
STS-B train with CoSENT in a plain PyTorch loop, then report test Spearman before and after.

usage: pair_reference.py [--model DIR] [--train sts-train.csv] [--test sts-test.csv] [--seed 42]
                         [--epochs 1] [--batch-size 16] [--lr 2e-5] [--max-seq-length 128]
                         [--save DIR]
  -> {"seed", "spearman_before", "spearman_test", "steps", "train_seconds", "torch",
      "sentence_transformers"} as the last stdout line; progress (step, loss) on stderr.

The recipe st's trainer uses too:
- labels = score / 5; CoSENTLoss(scale=20) of sentence-transformers on
  [preprocess(texts1), preprocess(texts2)] (each column its own forward pass);
- batches of 16 pairs, reshuffled each epoch by torch.randperm with
  torch.Generator().manual_seed(seed); the last, partial batch is kept (DataLoader's default);
- AdamW lr 2e-5, eps 1e-8, weight decay 0.01 except biases and LayerNorm weights (0 there);
- linear warm-up over round(0.1 * steps) steps, then linear decay to 0 (as transformers'
  get_linear_schedule_with_warmup, by hand with LambdaLR);
- global grad-norm clipping at 1.0; model.train() (dropout 0.1); torch.manual_seed(seed) first;
- max_seq_length 128; 2 threads.
Spearman: ×100, of cosine(embeddings) against gold, model.encode batch 64 in eval mode.

The files are read as `st eval sts` reads them: tab-separated, no quoting, the first 7 fields
(genre, file, year, id, score, sentence1, sentence2).
"""
import argparse
import json
import random
import sys
import time

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer
try:  # sentence-transformers >= 6 moved the losses; the old path still works but warns
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss
except ImportError:
    from sentence_transformers.losses import CoSENTLoss

DEFAULT_MODEL = "/root/.cache/st/models/sentence-transformers--all-MiniLM-L6-v2"
DEFAULT_DATA = "/work/shared/datasets/stsb"


def read(path):
    rows = [line.rstrip("\n").split("\t")[:7] for line in open(path, encoding="utf-8") if line.strip()]
    return [(r[5], r[6], float(r[4])) for r in rows]


def rank(x):
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b):
    try:
        from scipy.stats import spearmanr
        return float(spearmanr(a, b).statistic)
    except ImportError:
        return float(np.corrcoef(rank(np.asarray(a)), rank(np.asarray(b)))[0, 1])


def evaluate(model, pairs):
    model.eval()
    a = model.encode([p[0] for p in pairs], batch_size=64, convert_to_numpy=True)
    b = model.encode([p[1] for p in pairs], batch_size=64, convert_to_numpy=True)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100 * spearman(cos, np.array([p[2] for p in pairs]))


def features(model, texts):
    # `tokenize` is `preprocess` under its deprecated name in sentence-transformers >= 6.
    return (model.preprocess if hasattr(model, "preprocess") else model.tokenize)(texts)


def optimizer(model, lr):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "LayerNorm.weight" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=1e-8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--train", default=f"{DEFAULT_DATA}/sts-train.csv")
    ap.add_argument("--test", default=f"{DEFAULT_DATA}/sts-test.csv")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--save", default=None, help="save the trained model to this folder")
    args = ap.parse_args()

    torch.set_num_threads(2)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    train, test = read(args.train), read(args.test)
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = args.max_seq_length
    before = evaluate(model, test)
    print(f"untrained: test spearman {before:.2f}", file=sys.stderr, flush=True)

    loss_fn = CoSENTLoss(model, scale=20.0)
    opt = optimizer(model, args.lr)
    per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total = per_epoch * args.epochs
    warmup = round(0.1 * total)

    def schedule(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(args.seed)
    labels_all = torch.tensor([p[2] / 5.0 for p in train], dtype=torch.float32)

    step, start = 0, time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for b in range(0, len(order), args.batch_size):
            idx = order[b:b + args.batch_size]
            feats = [features(model, [train[i][0] for i in idx]),
                     features(model, [train[i][1] for i in idx])]
            loss = loss_fn(feats, labels_all[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0 or step == total:
                print(f"epoch {epoch + 1} step {step}/{total} loss {loss.item():.4f} "
                      f"lr {sched.get_last_lr()[0]:.2e} {time.perf_counter() - start:.0f}s",
                      file=sys.stderr, flush=True)
    train_seconds = time.perf_counter() - start

    after = evaluate(model, test)
    if args.save:
        model.save(args.save)
    print(json.dumps({"seed": args.seed, "spearman_before": round(before, 4),
                      "spearman_test": round(after, 4), "steps": step,
                      "train_seconds": round(train_seconds, 1), "torch": torch.__version__,
                      "sentence_transformers": sentence_transformers.__version__}))


if __name__ == "__main__":
    main()
