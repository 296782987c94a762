"""Reference outputs for `st encode`'s sentence-transformers features: --truncate-dim,
--precision (quantize_embeddings), prompts (include_prompt on and off) and `st search`
(util.semantic_search). st-cli's tests compare against them.

Run through `cargo xtask reference` (it makes the venv), or directly:
  ~/.cache/st/pyenv/bin/python xtask/py/encode_features.py MODEL_DIR crates/st-cli/tests/fixtures
where MODEL_DIR is all-MiniLM-L6-v2 (e.g. ~/.cache/st/models/sentence-transformers--all-MiniLM-L6-v2).

Writes:
  OUT/encode_features.json   sentences, float32 embeddings, truncated ones, every precision
                             (ranges from the data and from the calibration set), prompt
                             embeddings, search results
  OUT/calibration.npy        float32 embeddings of CALIBRATION (the --calibration file the
                             tests pass)
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer, util
from sentence_transformers.util.quantization import quantize_embeddings

torch.manual_seed(0)
torch.set_num_threads(2)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "Café déjà vu — naïve façade, résumé.",
    "",
]

# Embeddings of these set the int8/uint8 ranges when a calibration file is given.
CALIBRATION = [
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday.",
    "She plays the piano beautifully.",
    "Quantum computers use qubits.",
    "The recipe needs two cups of flour.",
    "He scored the winning goal in extra time.",
    "Rain is expected over the weekend.",
    "The museum opens at nine.",
    "東京は日本の首都です。",
    "I love pizza 🍕!",
]

QUERIES = ["Someone is having a meal.", "A person plays music."]
PROMPT = "query: "
TRUNCATE_DIM = 128
TOP_K = 3


def rows(a):
    return np.asarray(a).tolist()


def with_configs(model_dir, tmp, pooling=None, st_config=None):
    """A copy of model_dir with its pooling and config_sentence_transformers.json changed."""
    copy = Path(tmp) / "model"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(model_dir, copy)
    if pooling is not None:
        path = copy / "1_Pooling" / "config.json"
        config = json.loads(path.read_text())
        config.update(pooling)
        path.write_text(json.dumps(config, indent=2))
    if st_config is not None:
        (copy / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    return copy


def prompts(model_dir):
    """Prompt embeddings: included in pooling (MiniLM's own config), excluded (include_prompt
    false, mean and cls pooling), and chosen by name or by default_prompt_name."""
    model = SentenceTransformer(str(model_dir), device="cpu")
    out = {"prompt": PROMPT, "prompt_included": rows(model.encode(SENTENCES, prompt=PROMPT))}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pooling in [
            ("prompt_excluded_mean", {"include_prompt": False}),
            (
                "prompt_excluded_cls",
                {"include_prompt": False, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True},
            ),
        ]:
            model = SentenceTransformer(str(with_configs(model_dir, tmp, pooling=pooling)), device="cpu")
            out[name] = rows(model.encode(SENTENCES, prompt=PROMPT))
        st_config = {"prompts": {"query": PROMPT, "passage": "passage: "}, "default_prompt_name": "query"}
        model = SentenceTransformer(str(with_configs(model_dir, tmp, st_config=st_config)), device="cpu")
        out["st_config"] = st_config
        out["default_prompt"] = rows(model.encode(SENTENCES))
        out["prompt_name_passage"] = rows(model.encode(SENTENCES, prompt_name="passage"))
    return out


def search(model, corpus):
    """util.semantic_search (cosine) on float32, and Hamming distances on ubinary."""
    queries = model.encode(QUERIES)
    hits = util.semantic_search(torch.tensor(queries), torch.tensor(corpus), top_k=TOP_K)
    packed_c = quantize_embeddings(corpus, precision="ubinary")
    packed_q = quantize_embeddings(queries, precision="ubinary")
    hamming = np.unpackbits(packed_q[:, None, :] ^ packed_c[None, :, :], axis=-1).sum(-1)
    return {
        "queries": QUERIES,
        "top_k": TOP_K,
        "cosine_hits": hits,
        "hamming": rows(hamming),
    }


def main(model_dir, out_dir):
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(str(model_dir), device="cpu")
    emb = model.encode(SENTENCES)
    calibration = model.encode(CALIBRATION).astype(np.float32)
    np.save(out_dir / "calibration.npy", calibration)
    quantized = {}
    for precision in ["int8", "uint8", "binary", "ubinary"]:
        quantized[precision] = rows(quantize_embeddings(emb, precision=precision))
        # What `model.encode(..., precision=)` gives: the same as quantizing its output.
        assert np.array_equal(model.encode(SENTENCES, precision=precision), quantize_embeddings(emb, precision))
    for precision in ["int8", "uint8"]:
        quantized[precision + "_calibrated"] = rows(
            quantize_embeddings(emb, precision=precision, calibration_embeddings=calibration)
        )
    reference = {
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "sentences": SENTENCES,
        "calibration_sentences": CALIBRATION,
        "float32": rows(emb),
        "truncate_dim": TRUNCATE_DIM,
        "truncated": rows(model.encode(SENTENCES, truncate_dim=TRUNCATE_DIM)),
        "truncated_normalized": rows(
            model.encode(SENTENCES, truncate_dim=TRUNCATE_DIM, normalize_embeddings=True)
        ),
        "truncated_binary": rows(model.encode(SENTENCES, truncate_dim=TRUNCATE_DIM, precision="binary")),
        "quantized": quantized,
        "search": search(model, emb),
        **prompts(model_dir),
    }
    (out_dir / "encode_features.json").write_text(json.dumps(reference) + "\n")
    print(f"wrote {out_dir / 'encode_features.json'} and {out_dir / 'calibration.npy'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
