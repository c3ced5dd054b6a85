"""Embed throughput per model family on this machine (no download).

    python bench/families.py            # texts/s (and images/s for CLIP), one line per model
    python bench/families.py --quick    # fewer inputs, tiny models only

Models: the packaged all-MiniLM-L6-v2 (real weights); the tiny random test
models (BERT, DistilBERT, RoBERTa, CLIP), loaded through the real loaders;
and, unless ``--quick``, the full-size architectures of bert-base-uncased
and CLIP ViT-B/32 with random weights (speed does not depend on the weights;
the real weights would need a download). Each run embeds the same inputs
once to warm up, then times one pass on the device chosen by ``--device``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import core.errors  # noqa: E402,F401  (import the app package before models: see app/__init__.py)
from models.base import Embedder  # noqa: E402
from models.families import make_loader  # noqa: E402

SENTENCE = "Workers consume vectorization tasks from Kafka and write vectors to a database, item {i}."


def rate(embed: Callable[[Sequence[object]], object], items: Sequence[object]) -> float:
    embed(items[: min(len(items), 8)])  # warm-up: first-call allocations and kernels
    start = time.perf_counter()
    embed(items)
    return len(items) / (time.perf_counter() - start)


def measure(label: str, model: Embedder, texts: list[str], images: list[object], batch: int) -> None:
    text_rate = rate(lambda xs: model.embed_texts(xs, batch_size=batch, normalize=True), texts)
    line = f"{label:<58} dim={model.info.dim:<4} {text_rate:9.1f} texts/s"
    if "image" in model.info.modalities and images:
        image_rate = rate(lambda xs: model.embed_images(xs, batch_size=batch, normalize=True), images)
        line += f" {image_rate:9.1f} images/s"
    print(line, flush=True)


def full_size_models(device: str, tiny_bert: Path) -> list[tuple[str, Embedder]]:
    import open_clip
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from models.clip import ClipEmbedder
    from models.hf_transformers import HFTransformerEmbedder

    torch.manual_seed(0)
    bert = BertModel(BertConfig()).to(device).eval()  # bert-base-uncased's architecture (110M parameters)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)  # WordPiece over a tiny vocabulary: similar lengths
    tokenizer.model_max_length = 512
    hf = HFTransformerEmbedder(
        "bert-base-uncased (random)", bert, tokenizer, device=device, source="random", max_length=512
    )
    clip, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", device=device, force_quick_gelu=True)
    vit = ClipEmbedder(
        "ViT-B/32 (random)",
        clip,
        preprocess,
        open_clip.get_tokenizer("ViT-B-32"),
        device=device,
        source="random",
        normalize=None,
    )
    return [("bert-base-uncased architecture, random weights", hf), ("ViT-B/32 architecture, random weights", vit)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.images = 128, 16

    import numpy as np
    import torch
    from PIL import Image

    from tests.tiny_models import build_bert, build_clip, build_distilbert, build_roberta

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    texts = [SENTENCE.format(i=i) for i in range(args.texts)]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(args.images)]
    load = make_loader(device=args.device, cache_dir=None, allow_download=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = {
            "tiny BERT (2 layers, hidden 32)": build_bert(root / "bert"),
            "tiny DistilBERT (2 layers, hidden 32)": build_distilbert(root / "distilbert"),
            "tiny RoBERTa (2 layers, hidden 32)": build_roberta(root / "roberta"),
            "tiny CLIP (1+1 layers, width 32, 32 px)": build_clip(root / "clip"),
        }
        measure("sentence-transformers/all-MiniLM-L6-v2 (packaged)", load("all-MiniLM-L6-v2"), texts, [], args.batch)
        for label, path in tiny.items():
            measure(label, load(str(path)), texts, images, args.batch)
        if not args.quick:
            few_texts, few_images = texts[: max(32, args.texts // 4)], images[: max(8, args.images // 2)]
            for label, model in full_size_models(args.device, tiny["tiny BERT (2 layers, hidden 32)"]):
                measure(label, model, few_texts, few_images, args.batch)


if __name__ == "__main__":
    main()
