"""Embeddings in the database: each paper's computed once, at ingest, in batches.

A paper's vector embeds its title and abstract as a reader sees them (LaTeX
resolved, one line); its row keeps the model's name and a hash of that text, so a
new model or a changed text is embedded again and nothing else is. A row that does
not decode (a corrupt blob) is embedded again too. The abstract's sentences get
vectors from the same forward pass (``encoder.encode(spans=...)``): they say which
sentence is nearest a topic.

Topics (a sentence about them, else their filter's words) are embedded the same way
and shared by every subscriber who wrote the same text. Planning only reads what is
stored here: it never runs the model.

The bundled sample corpus ships with its vectors (``corpus/embeddings/<model>.npz``,
made by ``scripts/make-seed-vectors``): a paper whose text hash is there takes them
instead of a forward pass, so the demo and the tests do not spend half a minute
re-embedding the same 575 papers. Anything else is embedded by the model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.db import session_scope
from newsletter.embed.encoder import DIM, MODEL_NAME, Encoder, shared_encoder
from newsletter.errors import FilterSyntaxError
from newsletter.filters import compile_filter
from newsletter.filters.ast import Phrase, Term
from newsletter.models import Paper, PaperVector, TopicFilter, TopicVector, utcnow
from newsletter.text import latex_to_text, one_line

SEED_DIR = Path(__file__).resolve().parent.parent.parent / "corpus" / "embeddings"
_CHUNK = 500  # papers read per query while looking for work
_BATCH = 64  # papers embedded and stored per transaction
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


def abstract_sentences(abstract: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of an abstract as displayed (``display``)."""
    spans, start = [], 0
    for match in _SENTENCE_RE.finditer(abstract):
        spans.append((start, match.start()))
        start = match.end()
    if start < len(abstract):
        spans.append((start, len(abstract)))
    return [(a, b) for a, b in spans if b - a >= 12]


def display(text: str) -> str:
    """A text as a reader sees it (``render.content`` shows it so): LaTeX resolved, one line."""
    return one_line(latex_to_text(text))


def paper_text(title: str, abstract: str) -> tuple[str, int]:
    """What is embedded for a paper, and where its abstract starts in it."""
    head = display(title)
    return f"{head}. {display(abstract)}", len(head) + 2


def text_hash(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()[:32]


def topic_text(*, query: str, about: str | None) -> str:
    """What stands for a topic's meaning: its sentence, else its filter's own words."""
    if about and about.strip():
        return about.strip()
    words: list[str] = []
    for leaf in compile_filter(query).leaves:
        words += (
            leaf.words
            if isinstance(leaf, Phrase)
            else [leaf.word]
            if isinstance(leaf, Term)
            else []
        )
    return " ".join(dict.fromkeys(words))


def pack(vectors: np.ndarray) -> bytes:
    return np.asarray(vectors, dtype="<f2").tobytes()


def unpack(blob: bytes, rows: int | None = None) -> np.ndarray | None:
    """float32 vectors from a blob, or None when it is not ``rows`` x DIM float16."""
    if len(blob) % (2 * DIM) or (rows is not None and len(blob) != rows * 2 * DIM):
        return None
    out = np.frombuffer(blob, dtype="<f2").astype(np.float32).reshape(-1, DIM)
    return out if np.isfinite(out).all() else None


@dataclass(slots=True)
class EmbedReport:
    embedded: int = 0
    reused: int = 0
    seeded: int = 0
    topics: int = 0


def _seed(model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """text hash -> (vector, sentence vectors) from the bundled seed file, if any."""
    return _load_seed(SEED_DIR / f"{model}.npz")


@functools.cache
def _load_seed(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        return {}
    with np.load(path) as data:
        hashes, vectors = data["hashes"], data["vectors"]
        counts, sentences = data["counts"], data["sentences"]
    ends = np.cumsum(counts)
    return {
        str(h): (
            vectors[i].astype(np.float32),
            sentences[ends[i] - counts[i] : ends[i]].astype(np.float32),
        )
        for i, h in enumerate(hashes)
    }


def _seeded(
    work: list[tuple[int, str, int, list[tuple[int, int]], str]], model: str
) -> dict[tuple[int, str, int, tuple[tuple[int, int], ...], str], tuple[np.ndarray, np.ndarray]]:
    seed = _seed(model)
    found = {}
    for pid, text, offset, spans, digest in work:
        entry = seed.get(digest)
        if entry is not None and len(entry[1]) == len(spans):
            found[(pid, text, offset, tuple(spans), digest)] = entry
    return found


def export_seed(*, engine: sa.Engine, model: str, path: Path) -> int:
    """Write every stored vector of ``model`` to a seed file; returns how many."""
    hashes, vectors, counts, sentences = [], [], [], []
    with session_scope(engine=engine) as session:
        for row in session.exec(select(PaperVector).where(PaperVector.model == model)):
            spans = json.loads(row.spans)
            vector, matrix = unpack(row.vector, 1), unpack(row.sentences, len(spans))
            if vector is None or (spans and matrix is None):
                continue
            hashes.append(row.text_hash)
            vectors.append(vector[0])
            counts.append(len(spans))
            if spans:
                sentences.append(matrix)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        hashes=np.array(hashes),
        vectors=np.array(vectors, dtype="<f2"),
        counts=np.array(counts, dtype=np.int32),
        sentences=np.concatenate(sentences).astype("<f2")
        if sentences
        else np.zeros((0, DIM), "<f2"),
    )
    return len(hashes)


def embed_papers(
    *,
    engine: sa.Engine,
    encoder: Encoder | None = None,
    rebuild: bool = False,
    every_text: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Embed every paper whose vector is missing, stale (another model or text) or
    corrupt; ``rebuild`` embeds them all. ``on_progress(done, total)`` after each batch.

    ``every_text`` false: only the papers with no vector of this model and size, or
    changed since theirs was stored (``updated_at``, which ingest moves when it changes
    a paper), are read and their texts hashed. The service runs that at every planning
    tick; reading and hashing every stored paper's text there cost more, every few
    minutes, the bigger the store grew. ``newsletter papers embed`` checks every text,
    so a text changed behind the store's back is found too."""
    report = EmbedReport()
    work: list[tuple[int, str, int, list[tuple[int, int]], str]] = []
    encoder_name = encoder.name if encoder is not None else MODEL_NAME
    stale = sa.true()
    if not every_text and not rebuild:
        stale = sa.or_(
            PaperVector.paper_id.is_(None),  # type: ignore[union-attr]
            PaperVector.model != encoder_name,
            sa.func.length(PaperVector.vector) != 2 * DIM,
            Paper.updated_at > PaperVector.updated_at,
        )
    with session_scope(engine=engine) as session:
        last = 0
        while True:
            rows = session.exec(
                select(Paper.id, Paper.title, Paper.abstract, PaperVector.model,
                       PaperVector.text_hash, PaperVector.vector, PaperVector.sentences,
                       PaperVector.spans)
                .join(PaperVector, PaperVector.paper_id == Paper.id, isouter=True)  # type: ignore[arg-type]
                .where(Paper.id > last, stale)
                .order_by(Paper.id)
                .limit(_CHUNK)
            ).all()  # fmt: skip
            if not rows:
                break
            for pid, title, abstract, model, stored_hash, vector, sentences, stored in rows:
                text, offset = paper_text(title, abstract)
                digest = text_hash(encoder_name, text)
                if (
                    not rebuild
                    and model == encoder_name
                    and stored_hash == digest
                    and _readable(vector, sentences, stored)
                ):
                    report.reused += 1
                    continue
                spans = abstract_sentences(text[offset:])
                work.append((pid, text, offset, spans, digest))
            last = rows[-1][0]
    seeded = _seeded(work, encoder_name)
    if seeded:
        now = utcnow()
        with session_scope(engine=engine) as session:
            for (pid, _, _, spans, digest), (vector, sentences) in seeded.items():
                _upsert_paper(session, pid, encoder_name, digest, vector, sentences, spans, now)
        report.seeded = len(seeded)
        work = [w for w in work if (w[0], w[1], w[2], tuple(w[3]), w[4]) not in seeded]
    if not work:
        return report
    encoder = encoder or shared_encoder()
    # A text is embedded once for every paper that has it (the same paper listed twice,
    # under two keys): the hash names the model and the text, and where the title ends
    # places the abstract's sentences, so the vectors and the sentences' are the same.
    having: dict[tuple[str, int], list[int]] = {}  # (text, where its abstract starts) -> papers
    distinct = []  # the first paper of each text
    for w in work:
        same = having.setdefault((w[4], w[2]), [])
        if not same:
            distinct.append(w)
        same.append(w[0])
    for start in range(0, len(distinct), _BATCH):
        batch = distinct[start : start + _BATCH]
        encoded = encoder.encode(
            [text for _, text, _, _, _ in batch],
            spans=[
                [(a + offset, b + offset) for a, b in spans] for _, _, offset, spans, _ in batch
            ],
        )
        now = utcnow()
        with session_scope(engine=engine) as session:
            for (_, _, offset, spans, digest), vector, sentences in zip(
                batch, encoded.vectors, encoded.sentences, strict=True
            ):
                same = having[(digest, offset)]
                for pid in same:
                    _upsert_paper(session, pid, encoder.name, digest, vector, sentences, spans, now)
                report.embedded += len(same)
        if on_progress is not None:
            on_progress(report.embedded, len(work))
    return report


def _upsert_paper(
    session: Session,
    pid: int,
    model: str,
    digest: str,
    vector: np.ndarray,
    sentences: np.ndarray,
    spans: Sequence[tuple[int, int]],
    now: datetime,
) -> None:
    row = session.get(PaperVector, pid) or PaperVector(paper_id=pid)
    row.model, row.text_hash, row.updated_at = model, digest, now
    row.vector, row.sentences = pack(vector), pack(sentences)
    row.spans = json.dumps([list(s) for s in spans])
    session.add(row)


def _readable(vector: bytes | None, sentences: bytes | None, spans: str | None) -> bool:
    """A stored paper vector (and its sentences') that decodes: the right size, every
    value finite (a NaN would leave the paper without meaning, for good)."""
    if vector is None or unpack(vector, 1) is None:
        return False
    try:
        count = len(json.loads(spans or "[]"))
    except (ValueError, TypeError):
        return False
    return not count or (sentences is not None and unpack(sentences, count) is not None)


def embed_topics(
    *,
    engine: sa.Engine,
    encoder: Encoder | None = None,
    check: bool = False,
    rebuild: bool = False,
) -> int:
    """Embed every stored topic text that has no vector for this model yet; ``check``:
    or whose vector does not decode (``newsletter papers embed``; each tick reads only
    the hashes); ``rebuild``: every one."""
    texts: set[str] = set()
    with session_scope(engine=engine) as session:
        for q, a in session.exec(select(TopicFilter.query, TopicFilter.about).distinct()):
            try:
                texts.add(topic_text(query=q, about=a))
            except FilterSyntaxError:
                continue  # planning leaves that topic out, and names it
    return ensure_topic_vectors(
        engine=engine, texts=texts, encoder=encoder, check=check, rebuild=rebuild
    )


def ensure_topic_vectors(
    *,
    engine: sa.Engine,
    texts: Iterable[str],
    encoder: Encoder | None = None,
    check: bool = False,
    rebuild: bool = False,
) -> int:
    texts = sorted({t for t in texts if t})
    name = encoder.name if encoder is not None else MODEL_NAME
    have: set[str] = set()  # rebuild: every text embedded again
    with session_scope(engine=engine) as session:
        mine = TopicVector.model == name
        if check and not rebuild:
            have = {
                digest
                for digest, blob in session.exec(
                    select(TopicVector.text_hash, TopicVector.vector).where(mine)
                )
                if unpack(blob, 1) is not None
            }
        elif not rebuild:
            have = set(session.exec(select(TopicVector.text_hash).where(mine)))
    missing = [t for t in texts if text_hash(name, t) not in have]
    if not missing:
        return 0
    encoder = encoder or shared_encoder()
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        vectors = encoder.encode(chunk).vectors
        now = utcnow()
        with session_scope(engine=engine) as session:
            for text, vector in zip(chunk, vectors, strict=True):
                digest = text_hash(encoder.name, text)
                row = session.get(TopicVector, digest) or TopicVector(text_hash=digest)
                row.model, row.vector, row.updated_at = encoder.name, pack(vector), now
                session.add(row)
    return len(missing)
