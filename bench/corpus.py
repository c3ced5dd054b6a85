"""Real English sentences for the benchmark, from a PyPI wheel, offline after the first run.

The texts are the Lee news corpus (300 + 50 Australian news articles, ABC
Online, 2001) that gensim ships as test data in its wheel
(``gensim/test/test_data/lee_background.cor`` and ``lee.cor``). We do not
install gensim: ``pip download --no-deps gensim==4.4.0`` fetches the wheel
once into ``~/.cache/vectorize-worker/bench-corpus`` and the two files are
read straight out of the zip. Articles are split into sentences (about
2,800, 20 to 600 characters); the articles themselves serve as documents.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

GENSIM = "gensim==4.4.0"
CACHE = Path.home() / ".cache" / "vectorize-worker" / "bench-corpus"
MEMBERS = ("gensim/test/test_data/lee_background.cor", "gensim/test/test_data/lee.cor")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _wheel() -> Path:
    found = sorted(CACHE.glob("gensim-4.4.0-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", GENSIM, "-d", str(CACHE)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(
            f"bench: could not download the corpus wheel ({GENSIM}) into {CACHE}: {exc}; "
            "check that PyPI is reachable, or put a gensim-4.4.0 wheel there by hand."
        ) from None
    return sorted(CACHE.glob("gensim-4.4.0-*.whl"))[0]


def articles() -> list[str]:
    """The news articles, one string each."""
    with zipfile.ZipFile(_wheel()) as wheel:
        lines = [line for m in MEMBERS for line in wheel.read(m).decode("utf-8", "replace").splitlines()]
    return [" ".join(line.split()) for line in lines if len(line.split()) > 5]


def sentences() -> list[str]:
    """Sentences of the articles, in corpus order (lengths as they come: 20-600 characters)."""
    out = []
    for article in articles():
        out.extend(s for s in (p.strip() for p in _SPLIT.split(article)) if 20 <= len(s) <= 600)
    return out


if __name__ == "__main__":
    texts = sentences()
    lengths = sorted(len(t) for t in texts)
    print(
        f"{len(texts)} sentences, {len(articles())} articles; characters p10/p50/p90/max:",
        lengths[len(lengths) // 10],
        lengths[len(lengths) // 2],
        lengths[9 * len(lengths) // 10],
        lengths[-1],
    )
