"""Writes a tiny random BertForMaskedLM as an old-style `pytorch_model.bin` (keys under `bert.`,
LayerNorm parameters named gamma/beta as in bert-base-uncased's TF-converted checkpoint, plus
the `cls.` masked-LM head) and the hidden states PyTorch computes for a padded batch.

usage: tiny_bin.py OUT_DIR      (run by `cargo xtask reference`)
"""
import json
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

torch.manual_seed(0)
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=40, hidden_act="gelu_new")
model = BertForMaskedLM(config).eval()
state = {}
for k, v in model.state_dict().items():
    k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    state[k] = v.clone()
torch.save(state, out / "pytorch_model.bin", _use_new_zipfile_serialization=True)
config.to_json_file(out / "config.json")
ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]])
mask = (ids != 0).long()
with torch.no_grad():
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
(out / "expected.json").write_text(json.dumps({
    "input_ids": ids.tolist(),
    "attention_mask": mask.tolist(),
    "last_hidden_state": hidden.tolist(),
}) + "\n")
print("wrote", out)
