"""Writes tiny random MPNet, RoBERTa, XLM-RoBERTa and DistilBERT sentence-transformers folders and
what PyTorch computes on them, for crates/st-backbone/tests/families.rs.

No real checkpoint of RoBERTa, XLM-R or DistilBERT is reachable offline, and MPNet's real one
(all-mpnet-base-v2) is slow on the software backends, so each family gets a small random model
built by `transformers` (`from_config` + `save_pretrained`) and a tokenizer of its real kind
trained here on the text below: byte-level BPE (RoBERTa), Unigram with Metaspace (XLM-RoBERTa,
as sentencepiece), WordPiece (DistilBERT; MPNet, with its `<s>`/`</s>` specials). Each folder holds `expected.json`: the
sentences, their unpadded token ids, the padded batch and its `last_hidden_state`, the mean-pooled
sentence embeddings, and the checkpoint's key names (the set a folder saved by st must match for
`AutoModel.from_pretrained` to load it).

usage: tiny_families.py [--retrain] OUT_DIR [FAMILY...]
                                     (run by `cargo xtask reference`; writes OUT_DIR/<family>/;
                                     --retrain: new tokenizers rather than the fixtures' own)
       tiny_families.py --check SAVED_DIR FIXTURES_DIR
                                     (folders st saved from them must load in Python alike)
"""
import json
import random
import sys
from pathlib import Path

import safetensors.torch
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers
from sentence_transformers import SentenceTransformer

try:
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Pooling, Transformer

MAX_SEQ_LENGTH = 24
SEED = 0

SUBJECTS = ["A man", "The woman", "A child", "Two dogs", "The old teacher", "My neighbour",
            "A group of students", "The engineer", "Her brother", "The small cat"]
VERBS = ["is eating", "was reading", "plays", "watched", "is painting", "bought", "repairs",
         "talks about", "carried", "is looking for"]
OBJECTS = ["a piece of bread.", "the newspaper.", "the violin in the park.", "a red bicycle.",
           "an old wooden boat.", "the results of the experiment.", "fresh vegetables.",
           "a long letter from Zürich.", "the broken window!", "some coffee, quickly?"]

# Parity inputs: a one-word one, an empty one, accents and punctuation, one past MAX_SEQ_LENGTH.
SENTENCES = [
    "A man is eating food.",
    "Hi",
    "",
    "The café in Zürich serves crème brûlée, naïvely priced at 12.50 €!",
    "Two dogs watched the old teacher while a group of students talked about the results of "
    "the experiment, the broken window, the red bicycle and the long letter from the engineer.",
    "Her brother repairs an old wooden boat.",
]


def corpus():
    """A few hundred training lines for the tokenizers, fixed by the seed."""
    rng = random.Random(SEED)
    lines = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
             for _ in range(400)]
    return lines + SENTENCES


def roberta_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS_ROBERTA,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def xlmr_tokenizer():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=SPECIALS_ROBERTA,
                                      unk_token="<unk>")
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def trained_wordpiece(specials):
    """Lower-cased WordPiece (BERT's normalizer and pre-tokenizer) trained on the corpus."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tok.train_from_iterator(corpus(), trainer)
    return tok


def wordpiece_tokenizer():
    tok = trained_wordpiece(SPECIALS_BERT)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def mpnet_tokenizer():
    """all-mpnet-base-v2's pipeline: lower-cased WordPiece, `<s> $A </s>` (RobertaProcessing)."""
    tok = trained_wordpiece(SPECIALS_MPNET)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


# Special tokens in the order that fixes their ids: RoBERTa's <s>=0, <pad>=1, </s>=2.
SPECIALS_ROBERTA = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
SPECIALS_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# MPNet's: <s>=0, <pad>=1 (its positions' padding index), </s>=2; WordPiece's unknown is [UNK].
SPECIALS_MPNET = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]


FAMILIES = {
    "mpnet": (transformers.MPNetConfig, mpnet_tokenizer, SPECIALS_MPNET, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5)),
    "roberta": (transformers.RobertaConfig, roberta_tokenizer, SPECIALS_ROBERTA, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)),
    "xlm-roberta": (transformers.XLMRobertaConfig, xlmr_tokenizer, SPECIALS_ROBERTA, dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)),
    "distilbert": (transformers.DistilBertConfig, wordpiece_tokenizer, SPECIALS_BERT, dict(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, activation="gelu", pad_token_id=0)),
}


def fast_tokenizer(tok, specials):
    if specials is SPECIALS_BERT:
        names = dict(zip(["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"],
                         specials))
    else:
        names = dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", mask_token="<mask>",
                     cls_token="<s>", sep_token="</s>",
                     unk_token="[UNK]" if specials is SPECIALS_MPNET else "<unk>")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def build(family, work, keep_vocab):
    """The transformers model folder: random weights (seeded), trained tokenizer.

    The tokenizers trainers break frequency ties in hash order, so Unigram and WordPiece
    vocabularies differ from run to run; unless `--retrain`, a fixture's existing tokenizer is
    kept so that rerunning rewrites the same files."""
    config_class, make_tokenizer, specials, shape = FAMILIES[family]
    tok = Tokenizer.from_file(str(keep_vocab)) if keep_vocab.is_file() else make_tokenizer()
    positions = MAX_SEQ_LENGTH + (2 if family != "distilbert" else 0)
    config = config_class(vocab_size=tok.get_vocab_size(), max_position_embeddings=positions,
                          **shape)
    torch.manual_seed(SEED)
    model = transformers.AutoModel.from_config(config).eval()
    with torch.no_grad():
        # HF initializes LayerNorm to (1, 0) and zeroes the padding row of the position table;
        # noise everywhere makes a swapped gamma/beta or a wrong padding position show.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(work)
    fast_tokenizer(tok, specials).save_pretrained(work)
    return model


def write_family(family, out, retrain):
    work = out / "hf"
    keep_vocab = out / "model" / "tokenizer.json"
    model = build(family, work, Path("/nonexistent") if retrain else keep_vocab)
    st = SentenceTransformer(modules=[
        Transformer(str(work), max_seq_length=MAX_SEQ_LENGTH),
        Pooling(model.config.hidden_size, "mean"),
    ], device="cpu")
    folder = out / "model"
    st.save(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    expected = reference(st, model, folder)
    (out / "expected.json").write_text(json.dumps(expected) + "\n")
    for f in sorted(work.iterdir()):
        f.unlink()
    work.rmdir()
    check_reload(folder)
    print("wrote", out, "class", type(model).__name__)


def reference(st, model, folder):
    ids = [st.tokenize([s])["input_ids"][0].tolist() for s in SENTENCES]
    batch = st.tokenize(SENTENCES)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).last_hidden_state
        embeddings = st.encode(SENTENCES, convert_to_tensor=True, batch_size=len(SENTENCES))
    keys = sorted(safetensors.torch.load_file(folder / "model.safetensors").keys())
    return {
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "hf_class": type(model).__name__,
        "max_seq_length": MAX_SEQ_LENGTH,
        "sentences": SENTENCES,
        "ids": ids,
        "input_ids": batch["input_ids"].tolist(),
        "attention_mask": batch["attention_mask"].tolist(),
        "last_hidden_state": hidden.tolist(),
        "sentence_embeddings": embeddings.tolist(),
        "keys": keys,
    }


def check_reload(folder):
    """`AutoModel.from_pretrained` loads the folder with every key used (none missing or new)."""
    _, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{folder}: {bad}"


def check_saved(saved, fixtures):
    """Folders st saved (families.rs with ST_FAMILIES_SAVED): `AutoModel` loads each with no key
    missing or unexpected, as the right class, and reproduces the fixture's hidden states."""
    for family in FAMILIES:
        expected = json.loads((fixtures / family / "expected.json").read_text())
        model, info = transformers.AutoModel.from_pretrained(saved / family,
                                                             output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{family}: {bad}"
        assert type(model).__name__ == expected["hf_class"], type(model).__name__
        with torch.no_grad():
            hidden = model.eval()(input_ids=torch.tensor(expected["input_ids"]),
                                  attention_mask=torch.tensor(expected["attention_mask"]))
        diff = (hidden.last_hidden_state - torch.tensor(expected["last_hidden_state"])).abs().max()
        assert diff <= 1e-5, f"{family}: {diff}"
        print(f"{family}: st's saved folder loads as {expected['hf_class']}, max |diff| {diff:.2e}")


def main():
    if sys.argv[1] == "--check":
        check_saved(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    retrain = "--retrain" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--retrain"]
    out = Path(args[0])
    for family in args[1:] or list(FAMILIES):
        write_family(family, out / family, retrain)


if __name__ == "__main__":
    main()
