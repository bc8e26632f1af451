"""The embedding model and the stored vectors: the same numbers as the reference
implementation, loaded with no network, computed once, recomputed when they must be."""

from __future__ import annotations

import base64
import json
import socket
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.embed import store
from newsletter.embed.encoder import DIM, MODEL_NAME, Encoder, shared_encoder
from newsletter.models import PaperVector, TopicVector
from tests.helpers import add_paper

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(autouse=True)
def no_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """These tests watch the model work: the bundled seed vectors are out of the way."""
    monkeypatch.setattr(store, "SEED_DIR", tmp_path / "no-seed")


def test_vectors_equal_sentence_transformers_and_load_without_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fixture was made with sentence-transformers on PyTorch (see its "made_with");
    our NumPy forward pass must give the same unit vectors, with every socket refused."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    reference = json.loads(FIXTURE.read_text())
    expected = np.stack(
        [np.frombuffer(base64.b64decode(v), np.float32) for v in reference["vectors"]]
    )
    got = Encoder().encode(reference["texts"]).vectors
    assert got.shape == (len(reference["texts"]), DIM)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * expected).sum(1).min() > 0.9999


def test_sentence_vectors_come_from_the_same_pass_and_point_the_right_way() -> None:
    text = "Graph neural networks for molecules. We predict protein folding with attention."
    spans = [(0, 36), (37, len(text))]
    encoded = shared_encoder().encode([text], spans=[spans])
    sentences = encoded.sentences[0]
    queries = shared_encoder().encode(["protein structure prediction", "graph learning"]).vectors
    assert (sentences @ queries[0]).argmax() == 1
    assert (sentences @ queries[1]).argmax() == 0


def _vectors(engine: sa.Engine) -> dict[int, PaperVector]:
    with db.session_scope(engine=engine) as session:
        return {v.paper_id: v for v in session.exec(select(PaperVector))}


def _papers(engine: sa.Engine, now: datetime, count: int) -> list[int]:
    seen = now - timedelta(hours=1)
    return [
        add_paper(engine, title=f"Paper {i}", abstract=f"Abstract number {i}. More.", seen=seen)
        for i in range(count)
    ]


def test_papers_are_embedded_once_then_again_only_when_something_changed(
    sqlite_engine: sa.Engine, now: datetime
) -> None:
    engine = sqlite_engine
    ids = _papers(engine, now, 3)
    first = store.embed_papers(engine=engine)
    assert (first.embedded, first.reused) == (3, 0)
    again = store.embed_papers(engine=engine)
    assert (again.embedded, again.reused) == (0, 3)
    before = _vectors(engine)
    # A changed abstract, a corrupt blob, a vector of another model: each embedded again.
    with db.session_scope(engine=engine) as session:
        rewrite = sa.text("UPDATE papers SET abstract = 'Rewritten. Entirely.' WHERE id = :i")
        session.execute(rewrite, {"i": ids[0]})
        session.get(PaperVector, ids[1]).vector = b"\x00\x01garbage"  # type: ignore[union-attr]
    after = store.embed_papers(engine=engine)
    assert (after.embedded, after.reused) == (2, 1)
    now_vectors = _vectors(engine)
    assert now_vectors[ids[2]].vector == before[ids[2]].vector
    assert now_vectors[ids[0]].text_hash != before[ids[0]].text_hash
    assert store.unpack(now_vectors[ids[1]].vector, 1) is not None
    # The right size but not numbers (NaN, infinity), or sentences that do not decode:
    # embedded again, or the paper would have no meaning for good.
    nan = np.full(DIM, np.nan, "<f2").tobytes()
    with db.session_scope(engine=engine) as session:
        session.get(PaperVector, ids[0]).vector = nan  # type: ignore[union-attr]
        session.get(PaperVector, ids[1]).sentences = b"\x00" * 5  # type: ignore[union-attr]
    assert store.embed_papers(engine=engine).embedded == 2
    assert all(store.unpack(v.vector, 1) is not None for v in _vectors(engine).values())
    with db.session_scope(engine=engine) as session:
        session.get(PaperVector, ids[2]).model = "an-older-model"  # type: ignore[union-attr]
    assert store.embed_papers(engine=engine).embedded == 1
    assert store.embed_papers(engine=engine, rebuild=True).embedded == 3
    assert {v.model for v in _vectors(engine).values()} == {MODEL_NAME}


def test_the_services_ticks_read_only_papers_new_or_changed_since_their_vector(
    sqlite_engine: sa.Engine, now: datetime
) -> None:
    """The service embeds at every planning tick (``catch_up``): it must not read and
    hash every stored paper's text each time, yet miss nothing ingest changed."""
    from newsletter import embed
    from newsletter.models import Paper, utcnow

    engine = sqlite_engine
    ids = _papers(engine, now, 4)
    first = embed.catch_up(engine=engine)
    assert first is not None and (first.embedded, first.reused) == (4, 0)
    idle = store.embed_papers(engine=engine, every_text=False)
    assert (idle.embedded, idle.reused) == (0, 0)  # nothing read, nothing hashed
    before = _vectors(engine)
    with db.session_scope(engine=engine) as session:
        changed = session.get(Paper, ids[0])
        changed.abstract, changed.updated_at = "Rewritten by ingest. Entirely.", utcnow()  # type: ignore[union-attr]
        session.get(PaperVector, ids[1]).model = "an-older-model"  # type: ignore[union-attr]
        session.get(PaperVector, ids[2]).vector = b"\x00\x01garbage"  # type: ignore[union-attr]
        # touched by ingest, text the same: read, hashed, kept
        session.get(Paper, ids[3]).updated_at = utcnow()  # type: ignore[union-attr]
    tick = store.embed_papers(engine=engine, every_text=False)
    assert (tick.embedded, tick.reused) == (3, 1)
    after = _vectors(engine)
    assert after[ids[0]].text_hash != before[ids[0]].text_hash
    assert {v.model for v in after.values()} == {MODEL_NAME}
    assert store.unpack(after[ids[2]].vector, 1) is not None
    assert after[ids[3]].vector == before[ids[3]].vector
    # A text changed behind the store's back (its date not moved): only
    # ``newsletter papers embed``, which hashes every text, finds it.
    with db.session_scope(engine=engine) as session:
        rewrite = sa.text("UPDATE papers SET abstract = 'Edited by hand. Quietly.' WHERE id = :i")
        session.execute(rewrite, {"i": ids[1]})
    assert store.embed_papers(engine=engine, every_text=False).embedded == 0
    full = store.embed_papers(engine=engine)
    assert (full.embedded, full.reused) == (1, 3)


def test_papers_with_the_same_text_are_embedded_once(
    sqlite_engine: sa.Engine, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = now - timedelta(hours=1)
    texts = [
        ("Twin", "The same words. Twice."),
        ("Other", "Different words."),
        ("Twin", "The same words. Twice."),
        # the same text, but the title ends elsewhere: its abstract's sentences differ
        ("Twin. The same words", "Twice, as the abstract here. It is longer."),
        ("Twin", "The same words. Twice, as the abstract here. It is longer."),
    ]
    ids = [
        add_paper(sqlite_engine, title=t, abstract=a, seen=seen, key=f"listed {k}")
        for k, (t, a) in enumerate(texts)
    ]  # the same paper under two keys, as two sources may list it
    encoded: list[str] = []
    real = Encoder.encode

    def counting(self: Encoder, texts: list[str], **kwargs: object):  # type: ignore[no-untyped-def]
        encoded.extend(texts)
        return real(self, texts, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Encoder, "encode", counting)
    progress: list[tuple[int, int]] = []
    report = store.embed_papers(engine=sqlite_engine, on_progress=lambda *p: progress.append(p))
    assert store.paper_text(*texts[3])[0] == store.paper_text(*texts[4])[0]  # one hash
    assert report.embedded == 5 and len(encoded) == 4
    assert sorted(set(encoded)) == sorted({store.paper_text(t, a)[0] for t, a in texts})
    assert progress[-1] == (5, 5)
    stored = _vectors(sqlite_engine)
    assert stored[ids[0]].vector == stored[ids[2]].vector != stored[ids[1]].vector
    assert stored[ids[0]].spans == stored[ids[2]].spans and json.loads(stored[ids[0]].spans)
    for k in (3, 4):  # each with its own abstract's sentences
        text, offset = store.paper_text(*texts[k])
        spans = [list(span) for span in store.abstract_sentences(text[offset:])]
        assert json.loads(stored[ids[k]].spans) == spans
    assert stored[ids[3]].spans != stored[ids[4]].spans
    assert store.embed_papers(engine=sqlite_engine).reused == 5


def test_topics_share_one_vector_per_text(sqlite_engine: sa.Engine, now: datetime) -> None:
    from tests.helpers import subscribe

    subscribe(
        sqlite_engine, email="a@example.org", topics=["diffusion | Image generation"], now=now
    )
    subscribe(sqlite_engine, email="b@example.org", topics=["=image | Image generation"], now=now)
    subscribe(sqlite_engine, email="c@example.org", topics=["LoRA"], now=now)
    assert store.embed_topics(engine=sqlite_engine) == 2  # "Image generation" and "LoRA"
    assert store.embed_topics(engine=sqlite_engine) == 0
    with db.session_scope(engine=sqlite_engine) as session:
        assert len(session.exec(select(TopicVector)).all()) == 2
        session.execute(sa.update(TopicVector).values(vector=b"\x00\x01"))  # corrupt, both
    # Each tick reads the hashes only; `papers embed` decodes them and mends what does
    # not; --rebuild embeds every topic again.
    assert store.embed_topics(engine=sqlite_engine) == 0
    assert store.embed_topics(engine=sqlite_engine, check=True) == 2
    assert store.embed_topics(engine=sqlite_engine, check=True) == 0
    assert store.embed_topics(engine=sqlite_engine, rebuild=True) == 2


def test_a_model_whose_files_do_not_load_is_a_clear_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A truncated or emptied install: one line naming the folder, the error typed as
    the model missing, so every caller turns meaning off and says so."""
    from newsletter.embed.encoder import ModelMissingError, model_dir

    for damage in ("truncate", "empty", "no tokenizer"):
        copy = tmp_path / damage.replace(" ", "_")
        copy.mkdir()
        for f in model_dir().iterdir():
            if f.is_file():
                (copy / f.name).write_bytes(f.read_bytes())
        weights = copy / "model.safetensors"
        if damage == "truncate":
            weights.write_bytes(weights.read_bytes()[:1000])
        elif damage == "empty":
            weights.write_bytes(b"")
        else:
            (copy / "tokenizer.json").unlink()
        with pytest.raises(ModelMissingError, match="the model's files do not load") as info:
            Encoder(copy)
        assert str(copy) in str(info.value) and "\n" not in str(info.value)


def test_the_bundled_seed_matches_what_the_model_computes(
    monkeypatch: pytest.MonkeyPatch, sqlite_engine: sa.Engine, now: datetime
) -> None:
    """The sample corpus ships with its vectors; they must be what the model gives."""
    from newsletter.corpus.ingest import ingest
    from tests.conftest import CORPUS

    monkeypatch.setattr(store, "SEED_DIR", CORPUS / "embeddings")
    ingest(engine=sqlite_engine, paths=[CORPUS], now=now)
    report = store.embed_papers(engine=sqlite_engine)
    assert report.seeded == 575 and report.embedded == 0
    seeded = _vectors(sqlite_engine)
    sample = sorted(seeded)[::97]
    with db.session_scope(engine=sqlite_engine) as session:
        for pid in sample:
            session.delete(session.get(PaperVector, pid))
    monkeypatch.setattr(store, "SEED_DIR", Path("/nonexistent"))
    assert store.embed_papers(engine=sqlite_engine).embedded == len(sample)
    computed = _vectors(sqlite_engine)
    for pid in sample:
        a, b = (store.unpack(v[pid].vector, 1)[0] for v in (seeded, computed))  # type: ignore[index]
        assert float(a @ b) > 0.999
