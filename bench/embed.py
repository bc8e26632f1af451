"""Benchmark: embed 1,000 papers on one core with the NumPy runtime.

Run: .venv/bin/python bench/embed.py [--papers N]

The papers are the bundled corpus's (title and abstract as displayed), repeated with
a number added until there are N, so nothing is cached. One core: BLAS is held to
one thread before NumPy loads. Printed next to it, measured in the same run:

  gemm      the machine's single-core float32 matrix-product rate, and how much of
            it the encoder achieves (its forward pass is mostly matrix products)
  memory    the process's peak RSS before and after loading the model

PyTorch is not installed in this project (see newsletter/embed/encoder.py); the
figures for sentence-transformers on PyTorch's CPU build, measured once on this
machine, are in the README.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import resource
import time
from datetime import date
from pathlib import Path

import numpy as np

from newsletter.corpus.sources.dump import read_dump
from newsletter.embed.encoder import DIM, MAX_TOKENS, Encoder
from newsletter.embed.store import abstract_sentences, paper_text

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_gflops() -> float:
    a = np.random.default_rng(1).random((4096, 384), dtype=np.float32)
    b = np.random.default_rng(2).random((384, 1536), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 4096 * 384 * 1536 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=1000)
    args = parser.parse_args()
    records = []
    for path in sorted(CORPUS.glob("*.txt")):
        records += read_dump(path=path, today=date(2026, 11, 1)).papers
    texts, spans = [], []
    while len(texts) < args.papers:
        for rec in records:
            if len(texts) == args.papers:
                break
            suffix = f" ({len(texts) // len(records)})" if len(texts) >= len(records) else ""
            text, offset = paper_text(rec.title + suffix, rec.abstract)
            texts.append(text)
            spans.append([(a + offset, b + offset) for a, b in abstract_sentences(text[offset:])])
    before = rss_mb()
    encoder = Encoder()
    loaded = rss_mb()
    start = time.perf_counter()
    encoder.encode(texts, spans=spans)
    took = time.perf_counter() - start
    tokens = sum(min(len(e.ids), MAX_TOKENS) for e in encoder.tokenizer.encode_batch(texts))
    # Matrix products of the 6 layers: QKV (3 d^2), output (d^2), feed-forward (8 d^2).
    flops = tokens * 6 * 2 * (3 + 1 + 8) * DIM * DIM
    gflops = gemm_gflops()
    print(f"{args.papers:,} papers, {tokens:,} tokens (at most {MAX_TOKENS} each), one core")
    print(f"embed    {took:7.1f} s   {args.papers / took:6.1f} papers/s")
    print(f"gemm     {gflops:7.1f} GFLOP/s on one core; the encoder runs its matrix products")
    print(f"         at {flops / took / 1e9:.1f} GFLOP/s, {flops / took / 1e9 / gflops:.2f} of it")
    print(f"memory   peak RSS {before:.0f} MB before the model, {loaded:.0f} MB loaded, "
          f"{rss_mb():.0f} MB after the batch")  # fmt: skip


if __name__ == "__main__":
    main()
