"""Reference outputs from Python sentence-transformers, for st's parity tests.

Run through `cargo xtask reference` (it makes the venv). Writes, for a varied sentence set:
  <out>/reference.json         sentences, token ids, versions
  <out>/reference.safetensors  token embeddings per sentence (alone, unpadded), every pooling mode
                               over one padded batch, and the model's final embeddings

usage: reference.py MODEL_DIR OUT_DIR
"""
import json
import sys
from pathlib import Path

import safetensors.torch
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
try:
    from sentence_transformers.sentence_transformer.modules import Pooling
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Pooling

torch.manual_seed(0)
torch.set_num_threads(2)

LONG = " ".join(
    f"Sentence number {i} talks about transformers, tokenizers and embeddings." for i in range(40)
)

SENTENCES = [
    # The seed's six sample sentences.
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    # Punctuation, casing, numbers, URLs.
    "Hello, World!!! What's up?? (testing; punctuation: yes...)",
    "THE QUICK BROWN FOX jumps over the lazy dog 1234567890 times.",
    "See https://example.com/path?q=1&r=2 or mail me@example.org",
    # Unicode: accents, CJK, Cyrillic, Arabic, emoji, zero-width and odd spaces.
    "Café déjà vu — naïve façade, résumé.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "I love pizza 🍕🍕 and rockets 🚀!",
    "zero\u200bwidth and non\u00a0breaking spaces",
    "tab\tseparated\nand newline",
    # Edge cases: one word, empty, whitespace only, longer than max_seq_length.
    "word",
    "",
    "   ",
    LONG,
]

MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


def main():
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    transformer = model[0]
    tensors = {}
    ids = []
    with torch.no_grad():
        for i, s in enumerate(SENTENCES):
            features = model.tokenize([s])
            ids.append(features["input_ids"][0].tolist())
            out = transformer(dict(features))
            tensors[f"tokens.{i}"] = out["token_embeddings"][0].contiguous()

        # One padded batch of everything: pooling must ignore the padding.
        features = model.tokenize(SENTENCES)
        out = transformer(dict(features))
        dim = out["token_embeddings"].shape[-1]
        for mode in MODES:
            pooled = Pooling(dim, pooling_mode=mode)(dict(out))["sentence_embedding"]
            tensors[f"pool.{mode}"] = pooled.contiguous()

        emb = model.encode(SENTENCES, batch_size=32, convert_to_tensor=True)
        tensors["embeddings"] = emb.contiguous()

    safetensors.torch.save_file(tensors, str(out_dir / "reference.safetensors"))
    meta = {
        "generator": "xtask/py/reference.py",
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "modes": MODES,
        "sentences": SENTENCES,
        "input_ids": ids,
    }
    (out_dir / "reference.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(SENTENCES)} sentences to {out_dir}")


if __name__ == "__main__":
    main()
