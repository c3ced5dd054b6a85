"""Build tiny random models offline (no download): BERT-style, RoBERTa-style and CLIP (open_clip).

Each builder writes a directory the real loaders read, exactly as a real
model would sit on disk:

* BERT: ``save_pretrained`` of a 2-layer, hidden-32 ``BertModel`` and a
  ``BertTokenizerFast`` over a small WordPiece ``vocab.txt`` (letters as
  ``##`` pieces, so every lower-case word tokenizes).
* DistilBERT: the same vocabulary under a 2-layer ``DistilBertModel``.
* RoBERTa: a 2-layer ``RobertaModel`` and a ``RobertaTokenizerFast`` whose
  byte-level BPE (``vocab.json`` + ``merges.txt``) is trained here on a few sentences.
* CLIP: open_clip's Hugging Face layout, ``open_clip_config.json``
  (``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors``,
  with a 1-layer vision tower (32 px images, 8 px patches) and a 1-layer text
  tower over open_clip's bundled tokenizer (77 tokens).

Weights are seeded, so two builds are identical.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a cat sits on the mat and a kitten rests on a rug",
    "stock markets fell sharply today while bonds rose",
    "vectors of text and images share one space",
    "hello world, this is a tiny model for tests",
] * 20
BERT_WORDS = ["the", "a", "cat", "dog", "fox", "text", "model", "hello", "world", "image", "vector"]
TINY_MAX_LENGTH = 64


def build_bert(path: Path, *, max_length: int = TINY_MAX_LENGTH, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *letters]
    vocab += [f"##{c}" for c in letters] + BERT_WORDS + [f"##{w}" for w in ("s", "ing", "ed")]
    vocab = list(dict.fromkeys(vocab))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True, model_max_length=max_length)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length,
    )
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_distilbert(path: Path, *, max_length: int = TINY_MAX_LENGTH) -> Path:
    """DistilBERT: no token type ids, its own config names (dim, n_layers); the BERT vocabulary."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    bert = build_bert(path.parent / (path.name + "-vocab"), max_length=max_length)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = DistilBertTokenizerFast(
        vocab_file=str(bert / "vocab.txt"), do_lower_case=True, model_max_length=max_length
    )
    torch.manual_seed(3)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=max_length,
    )
    DistilBertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_roberta(path: Path, *, max_length: int = TINY_MAX_LENGTH) -> Path:
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(path))
    if int(transformers.__version__.split(".")[0]) >= 5:  # v5 takes the vocabulary itself, not file names
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#")]
        tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=max_length)
    else:  # pragma: no cover - transformers 4.x
        tokenizer = RobertaTokenizerFast(
            vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"), model_max_length=max_length
        )
    torch.manual_seed(1)
    config = RobertaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_length + 2,  # RoBERTa's positions start after the padding index
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    RobertaModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CLIP_MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_clip(path: Path) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2)
    model = open_clip.CLIP(**json.loads(json.dumps(CLIP_MODEL_CFG)))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    config = {
        "model_cfg": CLIP_MODEL_CFG,
        "preprocess_cfg": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def hf_cache_entry(hub: Path, repo_id: str, model_dir: Path) -> Path:
    """Lay ``model_dir`` out as the Hugging Face cache does (``models--org--name/snapshots/<rev>``)."""
    import shutil

    repo = hub / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model_dir, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision, encoding="utf-8")
    return snapshot
