"""Tests for newsletter.filters: the filter language (parse, print, errors), the indexed
matcher against the naive one over the bundled corpus, tokenization as readers meet it,
and ranking with its explanations."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import re
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from newsletter.corpus.records import merge_records
from newsletter.corpus.sources.dump import read_dump
from newsletter.errors import FilterSyntaxError
from newsletter.filters import (
    DayIndex,
    PaperDoc,
    Ranker,
    compile_filter,
    naive,
    parse_filter,
    to_query,
)
from newsletter.filters.ast import (
    COMPARISONS,
    All,
    And,
    Author,
    Category,
    Compare,
    Has,
    Node,
    Not,
    Or,
    Phrase,
    Term,
    positive_leaves,
)
from newsletter.filters.bitsets import iter_bits
from newsletter.filters.ceiling import ceiling, compile_ceiling
from newsletter.filters.index import compile_tree
from newsletter.filters.parser import MAX_DEPTH, MAX_QUERY_CHARS
from newsletter.filters.tokens import tokens
from tests.conftest import CORPUS

TODAY = date(2026, 11, 23)
FIRST_SEEN = datetime(2023, 6, 1, 8, 0, tzinfo=UTC)


def T(word: str, field: str | None = None, *, exact: bool = False, prefix: bool = False) -> Term:
    return Term(word, field, exact, prefix)


def P(*words: str, field: str | None = None) -> Phrase:
    return Phrase(tuple(words), field)


a, b, c, d = T("a"), T("b"), T("c"), T("d")


# --- the corpus, as PaperDocs ----------------------------------------------------------------


def load_corpus_docs() -> list[PaperDoc]:
    """The 575 unique papers of the bundled corpus, organized as plan.paper_doc does.

    Records carry no first-seen time, so papers are spread over ~2.4 years in corpus order
    (every 37 hours): ``date:`` then falls back on distinct days for undated papers."""
    records = []
    for path in sorted(CORPUS.glob("*.txt")):
        records.extend(read_dump(path=path, today=TODAY).papers)
    docs = []
    for i, rec in enumerate(merge_records(records).values()):
        organization = " ".join(x for x in (rec.organization_handle, rec.organization) if x)
        docs.append(
            PaperDoc(
                id=i + 1,
                title=rec.title,
                abstract=rec.abstract,
                organization=organization or None,
                upvotes=rec.upvotes,
                authors=rec.authors,
                published_on=rec.published_on,
                first_seen_at=FIRST_SEEN + timedelta(hours=37 * i),
            )
        )
    return docs


# Dumps carry no author names, categories or code links; the corpus papers get some here,
# drawn per paper, so the matchers are compared on metadata too. Every fifth paper keeps
# none, as a page-dump paper has none.
AUTHOR_POOL = [
    "José Müller", "Anna Muller", "Müllerová Petra", "Ada King Lovelace", "Ada Byron",
    "Jean-Luc Picard", "Luc Jean", "Zhang Wei", "Wei Zhang", "Henri Poincar\\'e",
    "Seán O'Brien", "Björn Ståhl", "JOSE MULLER",
]  # fmt: skip
CATEGORY_POOL = [
    "cs.CL", "cs.LG", "cs.CV", "cs.AI", "stat.ML", "hep-th", "math.OC", "eess.AS", "q-bio.NC",
    "CS.RO",
]  # fmt: skip


def with_metadata(docs: list[PaperDoc]) -> list[PaperDoc]:
    out = []
    for i, doc in enumerate(docs):
        if i % 5 == 0:
            out.append(doc)
            continue
        rng = random.Random(i)
        out.append(
            dataclasses.replace(
                doc,
                author_names=tuple(rng.sample(AUTHOR_POOL, rng.randint(1, 4))),
                categories=tuple(rng.sample(CATEGORY_POOL, rng.randint(1, 3))),
                has_code=rng.random() < 0.4,
            )
        )
    return out


@pytest.fixture(scope="module")
def corpus_docs() -> list[PaperDoc]:
    docs = with_metadata(load_corpus_docs())
    assert len(docs) == 575
    return docs


@pytest.fixture(scope="module")
def corpus_index(corpus_docs: list[PaperDoc]) -> DayIndex:
    return DayIndex(corpus_docs)


@pytest.fixture(scope="module")
def corpus_analysed(corpus_docs: list[PaperDoc]) -> list[dict]:
    return [naive.analyse(doc) for doc in corpus_docs]


def hits(index: DayIndex, query: str) -> set[int]:
    return set(iter_bits(index.evaluate(parse_filter(query))))


def grep(docs: list[PaperDoc], pattern: str, flags: int = re.IGNORECASE) -> set[int]:
    """Papers whose title or abstract matches a regular expression: the reader's view."""
    rx = re.compile(pattern, flags)
    return {i for i, doc in enumerate(docs) if rx.search(f"{doc.title}\n{doc.abstract}")}


def by_title(docs: list[PaperDoc], title: str) -> int:
    (i,) = [i for i, doc in enumerate(docs) if doc.title == title]
    return i


# --- 1. the parser: every construct, its tree ------------------------------------------------

PARSES: list[tuple[str, Node]] = [
    # single words: folded, lower-cased, accents stripped
    ("diffusion", T("diffusion")),
    ("Diffusion", T("diffusion")),
    ("DIFFUSION", T("diffusion")),
    ("Poincaré", T("poincare")),
    ("Poincar\\'e", T("poincare")),
    ("POINCARE", T("poincare")),
    ("naïve", T("naive")),
    ("Fr\\'{e}chet", T("frechet")),
    ("models", T("models")),  # stored unstemmed; stemming happens when matching
    # implicit and explicit AND, OR, NOT, -
    ("diffusion models", And((T("diffusion"), T("models")))),
    ("diffusion AND models", And((T("diffusion"), T("models")))),
    ("diffusion OR video", Or((T("diffusion"), T("video")))),
    ("NOT video", Not(T("video"))),
    ("-video", Not(T("video"))),
    ("diffusion -video", And((T("diffusion"), Not(T("video"))))),
    ("diffusion NOT video", And((T("diffusion"), Not(T("video"))))),
    ("NOT a b", And((Not(a), b))),  # NOT takes one operand
    ("NOT (a b)", Not(And((a, b)))),
    ("-(a OR b)", Not(Or((a, b)))),
    ("NOT NOT a", Not(Not(a))),
    ("--a", Not(Not(a))),
    # precedence: AND binds tighter than OR
    ("a OR b c", Or((a, And((b, c))))),
    ("a b OR c", Or((And((a, b)), c))),
    ("a AND b OR c AND d", Or((And((a, b)), And((c, d))))),
    ("(a OR b) c", And((Or((a, b)), c))),
    ("a (b OR c)", And((a, Or((b, c))))),
    ("((a))", a),
    ("(a) b", And((a, b))),
    # flattening
    ("a b c", And((a, b, c))),
    ("a AND b c", And((a, b, c))),
    ("(a b) c", And((a, b, c))),
    ("a (b c)", And((a, b, c))),
    ("a OR b OR c", Or((a, b, c))),
    ("(a OR b) OR c", Or((a, b, c))),
    ("a OR (b OR c)", Or((a, b, c))),
    # phrases
    ('"language model"', P("language", "model")),
    ('"Large  Language-Models"', P("large", "language", "models")),
    ('"diffusion"', P("diffusion")),
    ('x"y z"', And((T("x"), P("y", "z")))),
    ("Mixture-of-Experts", P("mixture", "of", "experts")),
    ("GPT-4", P("gpt", "4")),
    ("深度学习", P("深", "度", "学", "习")),
    # tokens that stay whole, acronym plurals
    ("3D", T("3d")),
    ("LoRA", T("lora")),
    ("LLMs", T("llm")),
    ("GANs", T("gan")),
    # wildcards and exact words
    ("diffus*", T("diffus", prefix=True)),
    ("Diffus*", T("diffus", prefix=True)),
    ("=model", T("model", exact=True)),
    ("=Models", T("models", exact=True)),
    # fields
    ("title:diffusion", T("diffusion", "title")),
    ("abstract:diffusion", T("diffusion", "abstract")),
    ("org:ziplab", T("ziplab", "org")),
    ("Title:Diffusion", T("diffusion", "title")),
    ('org:"ZIP Lab"', P("zip", "lab", field="org")),
    ("title:GPT-4", P("gpt", "4", field="title")),
    ("title:=model", T("model", "title", exact=True)),
    ("title:diffus*", T("diffus", "title", prefix=True)),
    ("-title:video", Not(T("video", "title"))),
    # a field before parentheses applies to every word inside
    ("title:(a OR b)", Or((T("a", "title"), T("b", "title")))),
    ("title:(a -b)", And((T("a", "title"), Not(T("b", "title"))))),
    ('title:(a OR "b c")', Or((T("a", "title"), P("b", "c", field="title")))),
    ("title:(a OR abstract:b)", Or((T("a", "title"), T("b", "abstract")))),
    ("title:(a b) c", And((T("a", "title"), T("b", "title"), c))),
    ("title:(a OR b) OR c", Or((T("a", "title"), T("b", "title"), c))),
    # comparisons
    ("upvotes>=5", Compare("upvotes", ">=", 5)),
    ("authors<=3", Compare("authors", "<=", 3)),
    ("date>=2024-01-01", Compare("date", ">=", date(2024, 1, 1))),
    ("Upvotes>10", Compare("upvotes", ">", 10)),
    ("upvotes>=5 diffusion", And((Compare("upvotes", ">=", 5), T("diffusion")))),
    ("-authors>20", Not(Compare("authors", ">", 20))),
    # metadata: author names (folded whole words), arXiv categories, code
    ("author:lovelace", Author(("lovelace",))),
    ("Author:Lovelace", Author(("lovelace",))),
    ('author:"Ada Lovelace"', Author(("ada", "lovelace"))),
    ('author:"ada  lovelace"', Author(("ada", "lovelace"))),
    ('author:"Lovelace"', Author(("lovelace",))),
    ("author:Müller", Author(("muller",))),
    ('author:"José Müller"', Author(("jose", "muller"))),
    ("author:Poincar\\'e", Author(("poincare",))),
    ("author:jean-luc", Author(("jean", "luc"))),
    ("author:O'Brien", Author(("o", "brien"))),
    ("author:models", Author(("models",))),  # unstemmed
    ("author:3", Author(("3",))),
    ("category:cs.CL", Category("cs.cl")),
    ("category:cs.cl", Category("cs.cl")),
    ("Category:CS.CL", Category("cs.cl")),
    ('category:"cs.CL"', Category("cs.cl")),
    ("category:cs.*", Category("cs.*")),
    ("category:Stat.*", Category("stat.*")),
    ("category:hep-th", Category("hep-th")),
    ("category:physics.comp-ph", Category("physics.comp-ph")),
    ("has:code", Has("code")),
    ("has:Code", Has("code")),
    ("-has:code", Not(Has("code"))),
    ("NOT category:cs.CV", Not(Category("cs.cv"))),
    ("has:code category:cs.CL", And((Has("code"), Category("cs.cl")))),
    ("has:code AND category:cs.CL", And((Has("code"), Category("cs.cl")))),
    ("author:lovelace OR category:cs.*", Or((Author(("lovelace",)), Category("cs.*")))),
    (
        "diffusion -category:cs.CV has:code",
        And((T("diffusion"), Not(Category("cs.cv")), Has("code"))),
    ),
    ("NOT (author:lovelace OR has:code)", Not(Or((Author(("lovelace",)), Has("code"))))),
    ("title:(a OR author:b)", Or((T("a", "title"), Author(("b",))))),
    ("authors>=3 author:lovelace", And((Compare("authors", ">=", 3), Author(("lovelace",))))),
    # everything
    ("*", All()),
    ("* -video", And((All(), Not(T("video"))))),
    # lower-case operators are plain words
    ("a and b", And((a, T("and"), b))),
    ("a or b", And((a, T("or"), b))),
    ("not a", And((T("not"), a))),
]


@pytest.mark.parametrize(("query", "tree"), PARSES, ids=[q for q, _ in PARSES])
def test_parser_builds_the_expected_tree(query: str, tree: Node) -> None:
    assert parse_filter(query) == tree
    assert parse_filter(to_query(tree)) == tree


COMPARE_CASES = [
    (f"{name}{op}{raw}", Compare(name, op, value))
    for name, raw, value in [
        ("upvotes", "5", 5),
        ("authors", "12", 12),
        ("date", "2024-01-31", date(2024, 1, 31)),
    ]
    for op in COMPARISONS
]


@pytest.mark.parametrize(("query", "tree"), COMPARE_CASES, ids=[q for q, _ in COMPARE_CASES])
def test_parser_reads_every_comparison_operator(query: str, tree: Node) -> None:
    assert parse_filter(query) == tree
    assert to_query(tree) == query


def test_parser_accepts_the_longest_and_deepest_filters_allowed() -> None:
    longest = " ".join(["ab"] * (MAX_QUERY_CHARS // 3)).ljust(MAX_QUERY_CHARS, "c")
    assert len(longest) == MAX_QUERY_CHARS
    assert isinstance(parse_filter(longest), And)
    deepest = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse_filter(deepest) == a
    assert parse_filter("NOT " * MAX_DEPTH + "a") is not None


# --- 2. syntax errors: where and what --------------------------------------------------------

ERRORS: list[tuple[str, int, str]] = [
    ("", 1, "the filter is empty"),
    ("   ", 1, "the filter is empty"),
    ('"language model', 1, "this quote is never closed"),
    ('diffusion "language model', 11, "this quote is never closed"),
    ("(a OR b", 1, "this '(' is never closed"),
    ("a (b", 3, "this '(' is never closed"),
    ("(", 1, "this '(' is never closed"),
    ("a (", 3, "this '(' is never closed"),
    ("title:(", 7, "this '(' is never closed"),
    ("a)", 2, "this ')' has no matching '('"),
    ("a) b", 2, "this ')' has no matching '('"),
    (")", 1, "this ')' has no matching '('"),
    ("()", 1, "empty parentheses"),
    ("a ( ) b", 3, "empty parentheses"),
    ("AND a", 1, "AND needs something on both sides"),
    ("a AND", 3, "AND needs something on both sides"),
    ("a AND AND b", 3, "AND needs something on both sides"),
    ("(AND a)", 2, "AND needs something on both sides"),
    ("OR a", 1, "OR needs something on both sides"),
    ("a OR", 3, "OR needs something on both sides"),
    ("a OR OR b", 3, "OR needs something on both sides"),
    ("(a OR)", 4, "OR needs something on both sides"),
    ("NOT", 1, "NOT needs something after it"),
    ("a NOT", 3, "NOT needs something after it"),
    ("(a NOT)", 4, "NOT needs something after it"),
    ("a -", 3, "no letters or digits"),
    ("foo:bar", 1, "unknown field 'foo:'"),
    ("diffusion Authors:3", 11, "unknown field 'authors:'"),
    ("title:", 1, "title: needs a word right after it"),
    ("a title: diffusion", 3, "title: needs a word right after it"),
    ("upvotes>=x", 10, "upvotes needs a whole number"),
    ("upvotes>=-1", 10, "upvotes needs a whole number"),
    ("upvotes>=²", 10, "upvotes needs a whole number"),
    ("upvotes>1234567890", 9, "upvotes needs a whole number"),
    ("authors<3.5", 9, "authors needs a whole number"),
    ("date>=2024-13-01", 7, "date needs a day like 2024-01-31"),
    ("date<2024-02-30", 6, "date needs a day like 2024-01-31"),
    ("a date=yesterday", 8, "date needs a day like 2024-01-31"),
    ("diff*sion", 5, "a * can only end a word"),
    ("=ab*c", 4, "a * can only end a word"),
    ("a*", 1, "at least 2 letters before the *"),
    ("x é*", 3, "at least 2 letters before the *"),
    ("=models*", 1, "both exact (=) and a prefix (*)"),
    ("=GPT-4", 1, "works on single words"),
    ("GPT-4*", 1, "works on single words"),
    ("title:*", 7, "title:* is not a search"),
    ("title:upvotes>3", 7, "title: cannot hold a comparison"),
    ('""', 1, "empty quotes"),
    ('title:" "', 7, "empty quotes"),
    ("x" * (MAX_QUERY_CHARS + 1), MAX_QUERY_CHARS + 1, "at most 500 characters"),
    ("a\nb", 2, "one line"),
    ("a b\r", 4, "one line"),
    ("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1), MAX_DEPTH + 1, "too deeply nested"),
    ("NOT " * (MAX_DEPTH + 1) + "a", 4 * MAX_DEPTH + 1, "too deeply nested"),
    ("year:2024", 1, "use title:, abstract:, org:, author:, category:, has:"),
    # author:
    ("author:", 1, "author: needs a value right after it, as in author:lovelace"),
    ("diffusion author: lovelace", 11, "author: needs a value right after it"),
    ("author:(ada OR lovelace)", 8, "author: takes one value, not a group"),
    ("author:love*", 12, "author: matches whole words of a name, so * does not work there"),
    ("author:=lovelace", 8, "author: already matches whole words exactly; drop the ="),
    ('author:""', 8, "author: needs a name to look for"),
    ("author:-", 8, "author: needs a name to look for"),
    ("author:AND", 1, "author: needs a value right after it"),
    # category:
    ("category:", 1, "category: needs a value right after it, as in category:cs.CL"),
    ("category:cs..CL", 10, "'cs..CL' is not an arXiv category; write one like cs.CL"),
    ("category:cs.CL.x", 10, "'cs.CL.x' is not an arXiv category"),
    ("category:cs_CL", 10, "'cs_CL' is not an arXiv category"),
    ("category:3d", 10, "'3d' is not an arXiv category"),
    ("category:cs.C*", 10, "'cs.C*' is not an arXiv category"),
    ("category:*", 10, "'*' is not an arXiv category"),
    ("category:cs*", 10, "for every cs category write cs.*"),
    ("category:cs", 10, "'cs' needs a subject, as in cs.CL; for every cs category write cs.*"),
    ("category:Math", 10, "'Math' needs a subject, as in math.OC"),
    ("category:çs.CL", 10, "'çs.CL' is not an arXiv category"),
    ("category:\u212aS.CL", 10, "is not an arXiv category"),  # a Kelvin sign, not a K
    ("diffusion -category:cs.", 21, "'cs.' is not an arXiv category"),
    ("category:(cs.CL OR cs.LG)", 10, "category: takes one value, not a group"),
    # has:
    ("has:data", 5, "has: accepts only code, as in has:code"),
    ("has:code has:pdf", 14, "has: accepts only code"),
    ("NOT has:*", 9, "has: accepts only code"),
    ("has:upvotes>3", 5, "has: accepts only code"),
    ("has:", 1, "has: needs a value right after it, as in has:code"),
    ("has: code", 1, "has: needs a value right after it"),
    ("has:(code)", 5, "has: takes one value, not a group"),
]


@pytest.mark.parametrize(("query", "column", "message"), ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_syntax_error_names_the_column_and_the_mistake(
    query: str, column: int, message: str
) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(query)
    err = caught.value
    assert err.column == column
    assert message in err.message
    assert str(err) == f"column {column}: {err.message}"


def test_caret_points_under_the_offending_column() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter("diffusion (models OR video")
    err = caught.value
    assert err.caret() == "diffusion (models OR video\n          ^"
    first, second = err.caret().split("\n")
    assert first[second.index("^")] == "("


@pytest.mark.parametrize(("query", "column", "message"), ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_caret_line_has_the_caret_at_the_column(query: str, column: int, message: str) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(query)
    caret = caught.value.caret()
    assert caret.startswith(query + "\n")
    assert caret[len(query) + 1 :] == " " * (column - 1) + "^"


# --- 3. properties: never crashes, printing round-trips --------------------------------------

PIECES = [
    "model", "Models", "LLMs", "GPT-4", "3D", "Poincar\\'e", "Poincaré", "深度学习", "and",
    "or", "AND", "OR", "NOT", "-", "(", ")", '"', "*", "=", "title:", "abstract:", "org:",
    "foo:", "upvotes>=5", "authors<3", "date>=2024-01-01", "date=2024-13-40", "upvotes>x",
    "upvotes=²", "diffus*", "=models", "ab*c", ":", "\\", "'", "İ", "ß", "ﬁ", "ǰ", "\t", "\n",
    "author:", "category:", "has:", "code", "cs.CL", "cs.*", "cs", "hep-th", "José", "Müller",
    "Jean-Luc", "author:lovelace", 'author:"José Müller"', "category:cs.*", "has:code",
]  # fmt: skip
grammarish = st.lists(
    st.tuples(st.sampled_from(PIECES), st.sampled_from(["", " ", "  "])), max_size=14
).map(lambda parts: "".join(p + sep for p, sep in parts))
any_query = st.one_of(st.text(max_size=80), grammarish)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_query)
def test_any_text_parses_or_raises_filter_syntax_error(query: str) -> None:
    try:
        parse_filter(query)
    except FilterSyntaxError as err:
        assert 1 <= err.column <= len(query) + 1
        assert err.message
        assert err.caret().startswith(query)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_query)
def test_printed_filter_parses_back_to_the_same_tree(query: str) -> None:
    try:
        tree = parse_filter(query)
    except FilterSyntaxError:
        return  # not a filter; the test above covers it
    printed = to_query(tree)
    assert parse_filter(printed) == tree
    assert to_query(parse_filter(printed)) == printed


VOCAB = ["diffusion", "model", "models", "3d", "gpt", "4", "lora", "llm", "poincare", "and",
         "or", "not", "title", "upvotes", "date", "x", "深"]  # fmt: skip
fields = st.sampled_from([None, "title", "abstract", "org"])
plain_terms = st.builds(Term, st.sampled_from(VOCAB), fields, st.booleans(), st.just(False))
prefix_terms = st.builds(
    Term, st.sampled_from([w for w in VOCAB if len(w) >= 2]), fields, st.just(False), st.just(True)
)
phrases = st.builds(
    Phrase, st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4).map(tuple), fields
)
compares = st.one_of(
    st.builds(
        Compare,
        st.sampled_from(["upvotes", "authors"]),
        st.sampled_from(COMPARISONS),
        st.integers(0, 10**9 - 1),
    ),
    st.builds(Compare, st.just("date"), st.sampled_from(COMPARISONS), st.dates()),
)
NAME_WORDS = ["jose", "muller", "ada", "lovelace", "jean", "luc", "o", "brien", "li", "mull",
              "3", "and", "title"]  # fmt: skip
CATEGORY_NAMES = ["cs.cl", "cs.lg", "cs.cv", "stat.ml", "hep-th", "math.oc", "cs.ro", "cs.*",
                  "stat.*", "math.*", "hep-th.*", "physics.comp-ph"]  # fmt: skip
metadata = st.one_of(
    st.lists(st.sampled_from(NAME_WORDS), min_size=1, max_size=3).map(lambda ws: Author(tuple(ws))),
    st.builds(Category, st.sampled_from(CATEGORY_NAMES)),
    st.just(Has("code")),
)
leaves = st.one_of(plain_terms, prefix_terms, phrases, compares, metadata, st.just(All()))


def _flat(kind: type[And] | type[Or], children: list[Node]) -> Node:
    """The parser's normal form: no And directly in And, no Or directly in Or."""
    out: list[Node] = []
    for child in children:
        out.extend(child.children if isinstance(child, kind) else (child,))
    return kind(tuple(out))


def trees(depth: int) -> st.SearchStrategy[Node]:
    if depth == 0:
        return leaves
    sub = trees(depth - 1)
    return st.one_of(
        leaves,
        st.builds(Not, sub),
        st.lists(sub, min_size=2, max_size=3).map(lambda cs: _flat(And, cs)),
        st.lists(sub, min_size=2, max_size=3).map(lambda cs: _flat(Or, cs)),
    )


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(4))
def test_random_tree_prints_and_parses_back(tree: Node) -> None:
    printed = to_query(tree)
    assume(len(printed) <= MAX_QUERY_CHARS)
    assert parse_filter(printed) == tree


# --- 4. the indexed matcher agrees with the naive one ----------------------------------------

OPERATORS = {"AND", "OR", "NOT"}
ABSENT = ["zyxqv", "quuxification", "snarfblat", "=zyxqv", "title:zyxqv", "org:nvidia"]


class FilterGenerator:
    """Random filters drawn from the corpus' own words, phrases and metadata."""

    def __init__(self, docs: list[PaperDoc], rng: random.Random) -> None:
        self.rng = rng
        words: set[str] = set()
        self.phrases: list[str] = []
        for doc in docs:
            for text in (doc.title, doc.abstract):
                words.update(
                    w.strip("-")
                    for w in re.findall(r"[A-Za-z][A-Za-z0-9-]*", text)
                    if w.strip("-") not in OPERATORS
                )
            toks = tokens(doc.title)
            for _ in range(2):
                if len(toks) >= 2:
                    k = rng.randint(2, min(4, len(toks)))
                    start = rng.randrange(len(toks) - k + 1)
                    self.phrases.append('"' + " ".join(toks[start : start + k]) + '"')
        self.words = sorted(w for w in words if w)
        self.single = sorted(w for w in self.words if len(tokens(w)) == 1)
        self.hyphenated = sorted(w for w in self.words if "-" in w)
        self.org_words = sorted({w for doc in docs for w in tokens(doc.organization or "")})
        self.upvotes = sorted({0, 1, 2, 3, 5, 7, 100} | {doc.upvotes or 0 for doc in docs})
        self.authors = sorted({1, 3, 5, 10, 30} | {doc.authors or 1 for doc in docs})
        days = sorted({doc.day for doc in docs if doc.day})
        self.days = [days[0], days[-1], *rng.sample(days, 20), date(2024, 1, 1)]
        self.author_lists = sorted({doc.author_names for doc in docs if len(doc.author_names) > 1})
        self.categories = sorted({c for doc in docs for c in doc.categories} | {"cs.SD"})

    def metadata(self) -> str:
        """author:, category: or has:, drawn so that each matches some papers and not others:
        whole names, some of their words (in order, reversed, across two authors, cut short)."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.55:
            names = rng.choice(self.author_lists)
            parts = rng.choice(names).split()
            how = rng.random()
            if how < 0.35:
                words = [rng.choice(parts)]
            elif how < 0.55:
                words = parts
            elif how < 0.65:
                words = parts[::-1]
            elif how < 0.8:  # a word of one author, then a word of another
                other = rng.choice([n for n in names if n.split() != parts])
                words = [rng.choice(parts), rng.choice(other.split())]
            else:  # a word cut short: never a whole-word match
                word = rng.choice(parts)
                words = [word[: rng.randint(1, len(word))]]
            text = " ".join(words)
            quoted = " " in text or rng.random() < 0.3
            return f'author:"{text}"' if quoted else f"author:{text}"
        if kind < 0.85:
            category = rng.choice(self.categories)
            if rng.random() < 0.3:
                return f"category:{category.split('.')[0]}.*"
            return f"category:{category.lower() if rng.random() < 0.3 else category}"
        return "has:code"

    def leaf(self) -> str:
        rng = self.rng
        if rng.random() < 0.12:
            return self.metadata()
        kind = rng.random()
        if kind < 0.30:
            return rng.choice(self.words)
        if kind < 0.40:
            return rng.choice(self.phrases)
        if kind < 0.45:
            return rng.choice(self.hyphenated)
        if kind < 0.53:
            word = rng.choice([w for w in self.single if len(w) >= 3] or self.single)
            return word[: rng.randint(2, len(word))] + "*"
        if kind < 0.60:
            return "=" + rng.choice(self.single)
        if kind < 0.72:
            field = rng.choice(["title", "abstract", "org"])
            inner = rng.choice(self.org_words) if field == "org" and rng.random() < 0.5 else None
            return f"{field}:{inner or self.leaf_text()}"
        if kind < 0.84:
            name = rng.choice(["upvotes", "authors", "date"])
            op = rng.choice(COMPARISONS)
            values = {"upvotes": self.upvotes, "authors": self.authors, "date": self.days}[name]
            value = rng.choice(values)
            return f"{name}{op}{value.isoformat() if isinstance(value, date) else value}"
        if kind < 0.87:
            return "*"
        if kind < 0.92:
            return rng.choice(ABSENT)
        return rng.choice(self.words).upper() if rng.random() < 0.5 else rng.choice(self.words)

    def leaf_text(self) -> str:
        """Something a field can hold: a word, phrase, prefix or exact word."""
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            return rng.choice(self.words)
        if kind < 0.7:
            return rng.choice(self.phrases)
        if kind < 0.85:
            return "=" + rng.choice(self.single)
        word = rng.choice([w for w in self.single if len(w) >= 3])
        return word[: rng.randint(2, len(word))] + "*"

    def query(self, depth: int = 0) -> str:
        rng = self.rng
        kind = rng.random()
        if depth >= 2 or kind < 0.35:
            return self.leaf()
        if kind < 0.5:
            return rng.choice(["NOT ", "-"]) + "(" + self.query(depth + 1) + ")"
        if kind < 0.55:
            return "title:(" + " OR ".join(self.leaf_text() for _ in range(2)) + ")"
        op = rng.choice([" ", " AND ", " OR ", " OR "])
        body = op.join(self.query(depth + 1) for _ in range(rng.randint(2, 3)))
        return f"({body})" if rng.random() < 0.5 else body


def _agreement_queries(docs: list[PaperDoc], count: int, seed: int) -> list[str]:
    gen = FilterGenerator(docs, random.Random(seed))
    out: list[str] = []
    while len(out) < count:
        query = gen.query()
        if len(query) <= MAX_QUERY_CHARS:
            out.append(query)
    return out


def test_indexed_matcher_agrees_with_naive_over_the_corpus(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex, corpus_analysed: list[dict]
) -> None:
    queries = _agreement_queries(corpus_docs, 2000, seed=20261123)
    ranker = Ranker(corpus_index)
    non_trivial = 0
    for query in queries:
        tree = parse_filter(query)  # every generated filter is valid
        expected = {
            i for i, doc in enumerate(corpus_docs) if naive.matches(tree, doc, corpus_analysed[i])
        }
        assert set(iter_bits(corpus_index.evaluate(tree))) == expected, query
        assert set(iter_bits(ranker.filter_bits(compile_filter(query)))) == expected, query
        non_trivial += 0 < len(expected) < len(corpus_docs)
    # The generator is not vacuous: most filters split the corpus.
    assert non_trivial > len(queries) // 2
    # ... and it exercises author:, category: and has:, alone and among other terms.
    for field in ("author:", "category:", "has:"):
        assert sum(field in q for q in queries) > 50, field


def test_indexed_matcher_agrees_with_naive_on_metadata_alone(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex, corpus_analysed: list[dict]
) -> None:
    """Every author:, category: and has: leaf the generator writes, on its own: those
    that match some papers and those (reversed, across two names, cut short) that match
    none."""
    gen = FilterGenerator(corpus_docs, random.Random(11))
    queries = {gen.metadata() for _ in range(1500)}
    assert len(queries) > 200
    split = none = 0
    for query in sorted(queries):
        tree = parse_filter(query)
        expected = {
            i for i, doc in enumerate(corpus_docs) if naive.matches(tree, doc, corpus_analysed[i])
        }
        assert set(iter_bits(corpus_index.evaluate(tree))) == expected, query
        assert set(iter_bits(compile_tree(tree)(corpus_index))) == expected, query
        split += 0 < len(expected) < len(corpus_docs)
        none += not expected
    assert split > 80 and none > 80


NAME_PARTS = ["José", "Jose", "MÜLLER", "Muller", "Müllerová", "Ada", "King", "Lovelace",
              "Jean-Luc", "Luc", "O'Brien", "Li", "3"]  # fmt: skip
CATEGORY_VALUES = ["cs.CL", "cs.LG", "CS.cv", "stat.ML", "hep-th", "math.OC", "physics.comp-ph"]
metadata_papers = st.builds(
    PaperDoc,
    id=st.just(0),
    title=st.lists(st.sampled_from(VOCAB), max_size=5).map(" ".join),
    abstract=st.lists(st.sampled_from(VOCAB), max_size=8).map(" ".join),
    upvotes=st.none() | st.integers(0, 20),
    authors=st.none() | st.integers(1, 5),
    author_names=st.lists(
        st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=4).map(" ".join), max_size=3
    ).map(tuple),
    categories=st.lists(st.sampled_from(CATEGORY_VALUES), max_size=3, unique=True).map(tuple),
    has_code=st.booleans(),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(metadata_papers, min_size=1, max_size=8), trees(3))
def test_indexed_matcher_agrees_with_naive_on_random_papers(
    docs: list[PaperDoc], tree: Node
) -> None:
    """Random papers with names, categories and code links; random filters over words,
    numbers and metadata: the index, the compiled filter and the naive matcher agree."""
    index = DayIndex(docs)
    expected = {i for i, doc in enumerate(docs) if naive.matches(tree, doc)}
    assert set(iter_bits(index.evaluate(tree))) == expected
    assert set(iter_bits(compile_tree(tree)(index))) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(metadata_papers, min_size=1, max_size=8), trees(3))
def test_compiled_ceiling_is_the_tree_walks_bit_for_bit(docs: list[PaperDoc], tree: Node) -> None:
    """Planning takes each filter's ceiling from its closures (memoizing the day's idf):
    the same float as walking the tree, for any filter and any day."""
    stats = DayIndex(docs).stats
    assert compile_ceiling(tree)(functools.lru_cache(None)(stats.idf)) == ceiling(tree, stats)


def test_compiled_ceiling_agrees_on_the_corpus(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    idf = functools.lru_cache(None)(corpus_index.stats.idf)
    scored = 0
    for query in _agreement_queries(corpus_docs, 1000, seed=5):
        expected = ceiling(parse_filter(query), corpus_index.stats)
        assert compile_filter(query).ceiling(idf) == expected, query
        scored += expected > 0
    assert scored > 500  # most name words: the ceilings compared are not all 0


def test_presearch_never_drops_a_match_on_a_small_day(corpus_docs: list[PaperDoc]) -> None:
    """On a day of 40 papers most anchors are absent, so presearch skips many filters;
    every skipped filter must truly match nothing."""
    day = corpus_docs[100:140]
    index = DayIndex(day)
    analysed = [naive.analyse(doc) for doc in day]
    ranker = Ranker(index)
    skipped = 0
    for query in _agreement_queries(corpus_docs, 1000, seed=7):
        flt = compile_filter(query)
        expected = {i for i, doc in enumerate(day) if naive.matches(flt.tree, doc, analysed[i])}
        assert set(iter_bits(index.evaluate(flt.tree))) == expected, query
        assert set(iter_bits(ranker.filter_bits(flt))) == expected, query
        skipped += not index.could_match(flt.anchors)
    assert skipped > 100  # presearch really was exercised


def test_ranked_papers_are_exactly_the_matching_ones(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    filters = [compile_filter(q) for q in ("diffusion -video", "title:LoRA", "org:ziplab")]
    expected = set().union(*(hits(corpus_index, f.query) for f in filters))
    ranked = Ranker(corpus_index).rank(filters, limit=len(corpus_docs))
    assert {m.index for m in ranked.matches} == expected
    assert ranked.total == len(expected) and ranked.more == 0
    scores = [m.score for m in ranked.matches]
    assert scores == sorted(scores, reverse=True)


# --- 5. tokenization, as the corpus shows it -------------------------------------------------


def test_3d_is_one_term(corpus_docs: list[PaperDoc], corpus_index: DayIndex) -> None:
    expected = grep(corpus_docs, r"(?<![A-Za-z0-9])3D(?![A-Za-z0-9])")
    assert len(expected) >= 20
    assert hits(corpus_index, "3D") == hits(corpus_index, "3d") == expected


def test_hyphenated_word_matches_as_a_phrase(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    expected = grep(corpus_docs, r"\bmixtures?[\s-]+of[\s-]+experts?\b")
    assert len(expected) >= 10
    assert hits(corpus_index, "Mixture-of-Experts") == expected
    assert hits(corpus_index, '"mixture of experts"') == expected
    # the parts alone match more: mixture AND experts anywhere
    assert hits(corpus_index, "mixture experts") > expected


def test_lora_matches_however_it_is_capitalized(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    expected = grep(corpus_docs, r"\bLoRAs?\b")
    assert len(expected) >= 10
    assert hits(corpus_index, "LoRA") == hits(corpus_index, "lora") == expected


def test_gpt_4_needs_both_parts_adjacent(corpus_docs: list[PaperDoc], corpus_index: DayIndex):
    expected = grep(corpus_docs, r"\bGPT[\s-]+4(?![A-Za-z0-9])")
    assert len(expected) >= 10
    assert hits(corpus_index, "GPT-4") == expected
    assert hits(corpus_index, "gpt 4") > expected  # two words anywhere


def test_poincare_matches_written_with_accent_or_latex(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    papers = {
        by_title(corpus_docs, "Poincaré ResNet"),
        by_title(corpus_docs, "Poincaré Embeddings for Learning Hierarchical Representations"),
    }
    # titles write "Poincaré", abstracts "Poincar\'e"
    assert all("Poincar\\'e" in corpus_docs[i].abstract for i in papers)
    for query in ("poincare", "Poincaré", "Poincar\\'e", "POINCARE", "title:poincare"):
        assert hits(corpus_index, query) == papers, query
    assert hits(corpus_index, "abstract:Poincaré") == papers


def test_cjk_words_match_character_by_character() -> None:
    index = DayIndex(
        [
            PaperDoc(1, "基于深度学习的图像分割", "我们提出一种新方法。"),
            PaperDoc(2, "学习深度的表示", "另一种方法。"),
            PaperDoc(3, "用LLM做推理", "Reasoning with LLMs in Chinese."),
        ]
    )
    assert hits(index, "深度学习") == {0}
    assert hits(index, '"深度 学习"') == {0}
    assert hits(index, "学习深度") == {1}  # order matters
    assert hits(index, "深度 学习") == {0, 1}  # two phrases, anywhere
    assert hits(index, "图像") == {0}
    assert hits(index, "LLM") == {2}
    assert hits(index, "title:推理 title:llm") == {2}


def test_acronym_plural_matches_its_singular(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    plural = grep(corpus_docs, r"\bLLMs\b", flags=0)
    assert len(plural) >= 100
    assert plural <= hits(corpus_index, "LLM")
    assert hits(corpus_index, "LLMs") == hits(corpus_index, "LLM")
    # However the filter writes it: a reader typing in lower case, or in capitals,
    # means the same papers (the stemmer leaves a word without vowels alone).
    for typed, same in (("llms", "LLMs"), ("LLMS", "LLMs"), ("vlms", "VLMs"), ("cnns", "CNNs")):
        assert hits(corpus_index, typed) == hits(corpus_index, same), typed
    titles = ["LLMS THAT REASON", "GANs at play", "GPs for regression", "GPS traces"]
    shouting = DayIndex([PaperDoc(k, t, "x.") for k, t in enumerate(titles, start=1)])
    assert hits(shouting, "LLMs") == {0} and hits(shouting, "gans") == {1}
    assert hits(shouting, "GPS") == {3} and hits(shouting, "GPs") == {2}  # three letters


def test_stemming_joins_word_forms_and_exact_keeps_them_apart(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    model = hits(corpus_index, "model")
    plural = grep(corpus_docs, r"\bmodels\b")
    gerund = grep(corpus_docs, r"\bmodel(l)?ing\b")
    assert plural and gerund
    assert plural | gerund <= model
    only_plural = plural - grep(corpus_docs, r"\bmodel\b")
    assert len(only_plural) >= 10
    assert not only_plural & hits(corpus_index, "=model")
    assert only_plural <= hits(corpus_index, "=models")
    assert hits(corpus_index, "=model") < model


def test_words_end_at_word_boundaries(corpus_docs: list[PaperDoc], corpus_index: DayIndex):
    index = DayIndex(
        [
            PaperDoc(1, "Diffusional processes in porous media", "Transport by diffusional flux."),
            PaperDoc(2, "Diffusion models for images", "A denoising diffusion model."),
        ]
    )
    assert hits(index, "diffusion") == {1}
    assert hits(index, "diffusional") == {0}
    assert hits(index, "diffus*") == {0, 1}

    resnet = by_title(corpus_docs, "Poincaré ResNet")
    assert resnet in hits(corpus_index, "title:resnet")
    assert resnet not in hits(corpus_index, "title:res")
    assert resnet not in hits(corpus_index, "title:net")
    assert resnet in hits(corpus_index, "title:res*")


def test_phrases_need_order_and_adjacency(corpus_docs: list[PaperDoc], corpus_index: DayIndex):
    paper = by_title(
        corpus_docs,
        'Not All Large Language Models (LLMs) Succumb to the "Reversal Curse": '
        "A Comparative Study of Deductive Logical Reasoning in BERT and GPT Models",
    )
    assert paper in hits(corpus_index, 'title:"large language models"')
    assert paper in hits(corpus_index, 'title:"large language model"')  # stems, still
    assert paper not in hits(corpus_index, 'title:"language large models"')
    assert paper not in hits(corpus_index, 'title:"large models"')
    assert paper in hits(corpus_index, "title:large title:models")


# --- 6. ranking and explanations -------------------------------------------------------------

DAY = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


def paper(
    id: int, title: str, abstract: str, *, upvotes: int | None = 0, hours: int = 0
) -> PaperDoc:
    return PaperDoc(
        id=id,
        title=title,
        abstract=abstract,
        upvotes=upvotes,
        first_seen_at=DAY + timedelta(hours=hours),
    )


FILLER = [
    paper(100 + k, f"Benchmark suite number {k}", "A transformer baseline is used throughout.")
    for k in range(8)
]


def rank(docs: list[PaperDoc], queries: list[str], limit: int = 50):
    return Ranker(DayIndex(docs)).rank([compile_filter(q) for q in queries], limit=limit)


def ids(ranked) -> list[int]:  # type: ignore[no-untyped-def]
    return [m.paper_id for m in ranked.matches]


@pytest.mark.parametrize("abstract_upvotes", [3, 1000])
def test_title_hit_outranks_abstract_only_hit(abstract_upvotes: int) -> None:
    # The title paper has the larger id and is older: only its score can put it first.
    in_title = paper(
        2, "Diffusion for graph learning", "We study graph learning with a new method.", upvotes=3
    )
    in_abstract = paper(
        1,
        "Graph learning with a new method",
        "We study diffusion for graph learning.",
        upvotes=abstract_upvotes,
        hours=5,
    )
    ranked = rank([in_abstract, in_title, *FILLER], ["diffusion"])
    assert ids(ranked) == [2, 1]


def test_rarer_word_weighs_more_than_a_common_one() -> None:
    rare = paper(2, "Hyperbolic networks for graphs", "We evaluate on standard benchmarks.")
    common = paper(1, "Transformer networks for graphs", "We evaluate on standard benchmarks.")
    docs = [common, rare, *FILLER]  # "transformer" is in every filler abstract
    assert ids(rank(docs, ["hyperbolic OR transformer"]))[:2] == [2, 1]
    assert ids(rank(docs, ["transformer", "hyperbolic"]))[:2] == [2, 1]


def test_upvotes_order_otherwise_equal_papers() -> None:
    text = ("Sparse attention for video", "We make video attention sparse.")
    docs = [paper(1, *text, upvotes=2), paper(2, *text, upvotes=40, hours=-3), *FILLER]
    ranked = rank(docs, ["video"])
    assert ids(ranked) == [2, 1]
    assert ranked.matches[0].score > ranked.matches[1].score


def test_star_ranks_by_upvotes_then_freshness() -> None:
    docs = [
        paper(1, "Alpha", "One.", upvotes=10, hours=1),
        paper(2, "Beta", "Two.", upvotes=10, hours=9),
        paper(3, "Gamma", "Three.", upvotes=50, hours=0),
        paper(4, "Delta", "Four.", upvotes=None, hours=20),
        paper(5, "Epsilon", "Five.", upvotes=0, hours=30),
    ]
    ranked = rank(docs, ["*"])
    assert ids(ranked) == [3, 2, 1, 5, 4]
    assert all(m.filters == ("*",) and m.words == () for m in ranked.matches)


def test_paper_match_names_exactly_the_filters_that_matched() -> None:
    docs = [
        paper(1, "Diffusion for graph learning", "Graph learning with diffusion.", upvotes=120),
        paper(2, "Video diffusion", "Generating video.", upvotes=3),
        paper(3, "Graph Learning at scale", "Large graphs.", upvotes=150),
        paper(4, "Speech recognition", "Audio only.", upvotes=1),
    ]
    typed = ["Diffusion", '"Graph  Learning"', "video OR audio", "upvotes>=100"]
    ranked = rank(docs, typed)
    assert {m.paper_id: m.filters for m in ranked.matches} == {
        1: ("Diffusion", '"Graph  Learning"', "upvotes>=100"),
        2: ("Diffusion", "video OR audio"),
        3: ('"Graph  Learning"', "upvotes>=100"),
        4: ("video OR audio",),
    }


def test_words_are_shown_as_the_paper_writes_them() -> None:
    doc = paper(
        1,
        "Scaling Models of Poincaré Embeddings",
        "We compare with GPT-4 on hyperbolic tasks in Poincar\\'e disks, "
        "using Large Language Models.",
    )
    (match,) = rank([doc, *FILLER], ["model", "poincare", "GPT-4", '"language model"']).matches
    assert match.words == ("Models", "Poincaré", "GPT-4", "Language Models")


def test_words_under_not_are_not_shown() -> None:
    doc = paper(1, "Video Diffusion without sound", "We generate video frames.")
    (match,) = rank([doc, *FILLER], ["diffusion -(video audio)"]).matches
    assert match.words == ("Diffusion",)  # "Video" is in the paper, but under NOT
    assert match.filters == ("diffusion -(video audio)",)


def test_limit_caps_the_list_and_more_counts_the_rest() -> None:
    docs = [paper(k, f"Paper {k}", "Text.", upvotes=k) for k in range(1, 6)]
    ranked = rank(docs, ["*"], limit=2)
    assert ids(ranked) == [5, 4]
    assert ranked.total == 5 and ranked.more == 3
    everything = rank(docs, ["*"], limit=10)
    assert len(everything.matches) == 5 and everything.more == 0
    assert rank(docs, ["zyxqv"], limit=2).total == 0


def test_not_only_filter_matches_and_explains_with_no_words() -> None:
    docs = [
        paper(1, "Video generation", "Frames.", upvotes=9),
        paper(2, "Graph learning", "Nodes.", upvotes=1),
        paper(3, "Speech models", "Audio.", upvotes=5),
    ]
    ranked = rank(docs, ["-video"])
    assert ids(ranked) == [3, 2]
    assert all(m.filters == ("-video",) and m.words == () for m in ranked.matches)


def test_word_scores_over_all_papers_at_once_equal_paper_by_paper(
    corpus_docs: list[PaperDoc], corpus_index: DayIndex
) -> None:
    """The array path (counts kept at indexing) against its oracle, the per-paper loop,
    for every word, adjacent pair and run of three of the corpus's titles, exact, as a
    prefix, in every field form."""
    ranker = Ranker(corpus_index)
    from newsletter.filters.ast import Phrase, Term
    from newsletter.filters.tokens import tokens

    leaves: set[Term | Phrase] = set()
    for doc in corpus_docs[::7]:
        words = tokens(doc.title)
        for a, b in itertools.pairwise(words):
            leaves |= {Term(a), Term(a, field="title"), Phrase((a, b)), Phrase((a,), "abstract")}
            leaves |= {Term(a, exact=True), Term(a[:4], prefix=True, field="abstract")}
        for run in zip(words, words[1:], words[2:], strict=False):
            leaves |= {Phrase(run), Phrase(run, "title")}
    assert len(leaves) > 1000
    counted = 0
    for leaf in leaves:
        counted += bool(ranker.leaf_scores(leaf).any())
        fast, slow = ranker.leaf_scores(leaf), ranker.leaf_scores_by_paper(leaf)
        assert np.array_equal(fast, slow), leaf
    assert counted > 1000  # they score papers, not zeros against zeros


# --- 7. metadata: author:, category:, has: --------------------------------------------------

META_PAPERS = [
    PaperDoc(
        1,
        "Diffusion models for text",
        "We train diffusion models on text.",
        upvotes=5,
        author_names=("José Müller", "Ada King Lovelace"),
        categories=("cs.CL", "cs.LG"),
        has_code=True,
    ),
    PaperDoc(
        2,
        "Graph learning at scale",
        "Message passing networks.",
        upvotes=12,
        author_names=("Jose Smith", "Anna Muller"),  # jose and muller, but in two names
        categories=("stat.ML", "cs.LG"),
    ),
    PaperDoc(
        3,
        "Video diffusion",
        "Frames, generated.",
        upvotes=2,
        author_names=("Petra Müllerová", "Jean-Luc Picard"),
        categories=("cs.CV",),
        has_code=True,
    ),
    PaperDoc(
        4,
        "String theory in AdS",
        "Branes and holography.",
        author_names=("Juan Maldacena",),
        categories=("hep-th",),
    ),
    # a page-dump paper: no names, no categories, no code link
    PaperDoc(5, "A dumped paper about diffusion", "Nothing but text.", upvotes=1),
]

META_MATCHES: list[tuple[str, set[int]]] = [
    # author: whole words, folded, in order, within one name
    ("author:muller", {1, 2}),
    ("author:Müller", {1, 2}),
    ("author:MULLER", {1, 2}),
    ('author:"jose muller"', {1}),  # paper 2 has a Jose and a Muller, not one José Müller
    ('author:"José Müller"', {1}),
    ('author:"muller jose"', set()),  # order matters
    ("author:mull", set()),  # whole words only
    ("author:Müllerová", {3}),
    ("author:mullerova", {3}),
    ("author:jose", {1, 2}),
    ('author:"ada lovelace"', {1}),  # other words may come between
    ('author:"lovelace ada"', set()),
    ('author:"ada king lovelace"', {1}),
    ("author:jean-luc", {3}),
    ('author:"luc picard"', {3}),
    ('author:"jean luc picard"', {3}),
    ('author:"picard jean"', set()),
    ("author:diffusion", set()),  # words of the title are not names
    ('author:"smith anna"', set()),  # the end of one name and the start of the next
    ("-author:picard", {1, 2, 4, 5}),  # the dumped paper has no authors: NOT matches it
    # category: exact (any case) or a whole archive
    ("category:cs.CL", {1}),
    ("category:cs.cl", {1}),
    ("category:CS.LG", {1, 2}),
    ('category:"cs.CV"', {3}),
    ("category:cs.*", {1, 2, 3}),
    ("category:stat.*", {2}),
    ("category:hep-th", {4}),
    ("category:hep-th.*", set()),  # hep-th has no subjects
    ("category:cs.RO", set()),
    ("category:stat.ML OR category:hep-th", {2, 4}),
    ("NOT category:cs.*", {4, 5}),
    # has:code
    ("has:code", {1, 3}),
    ("-has:code", {2, 4, 5}),
    # combined with each other, with words and with numbers
    ("has:code AND category:cs.CL", {1}),
    ("has:code category:cs.CV", {3}),
    ("has:code -category:cs.CV", {1}),
    ("diffusion has:code", {1, 3}),
    ("diffusion -has:code", {5}),
    ("diffusion -author:muller", {3, 5}),
    ("author:muller OR category:hep-th", {1, 2, 4}),
    ("(author:picard OR author:maldacena) -category:cs.*", {4}),
    ("NOT (author:lovelace OR has:code)", {2, 4, 5}),
    ("upvotes>=5 category:cs.LG", {1, 2}),
    ("title:(diffusion OR author:maldacena)", {1, 3, 4, 5}),
    ("* -category:cs.*", {4, 5}),
]


@pytest.mark.parametrize(("query", "expected"), META_MATCHES, ids=[q for q, _ in META_MATCHES])
def test_metadata_filters_match_these_papers(query: str, expected: set[int]) -> None:
    index = DayIndex(META_PAPERS)
    tree = parse_filter(query)
    by_id = {META_PAPERS[i].id for i in iter_bits(index.evaluate(tree))}
    assert by_id == expected
    assert {doc.id for doc in META_PAPERS if naive.matches(tree, doc)} == expected
    flt = compile_filter(query)
    bits = Ranker(index).filter_bits(flt)
    assert {META_PAPERS[i].id for i in iter_bits(bits)} == expected
    assert parse_filter(to_query(tree)) == tree


def test_metadata_names_no_words_to_score_or_highlight() -> None:
    for query in ("has:code", "category:cs.*", 'author:"José Müller"', "-author:lovelace"):
        assert positive_leaves(parse_filter(query)) == []
        assert compile_filter(query).leaves == ()
    flt = compile_filter("diffusion has:code -category:cs.CV author:jose")
    assert flt.leaves == (T("diffusion"),)


def test_filter_of_metadata_only_matches_and_ranks_by_upvotes() -> None:
    """Like upvotes>=5: nothing to score, so its matches come by upvotes, then freshness,
    each naming the filter and no words."""
    ranked = rank(META_PAPERS, ["has:code OR category:cs.LG"])
    assert ids(ranked) == [2, 1, 3]
    assert all(m.score == 0.0 for m in ranked.matches)
    assert all(m.words == () for m in ranked.matches)
    assert all(m.filters == ("has:code OR category:cs.LG",) for m in ranked.matches)
    (only,) = rank(META_PAPERS, ["has:code AND category:cs.CL"]).matches
    assert (only.paper_id, only.words) == (1, ())


def test_metadata_adds_no_score_to_the_words_beside_it() -> None:
    """``diffusion has:code`` scores its papers exactly as ``diffusion`` does, and shows
    only the words it matched: metadata narrows, it never ranks or highlights."""
    docs = [*META_PAPERS, *FILLER]
    plain = {m.paper_id: m for m in rank(docs, ["diffusion"]).matches}
    narrowed = rank(docs, ["diffusion has:code"]).matches
    assert [m.paper_id for m in narrowed] == [p for p in plain if p in (1, 3)]
    for m in narrowed:
        assert m.score == pytest.approx(plain[m.paper_id].score)
        assert m.words == plain[m.paper_id].words
    assert {w.lower() for m in narrowed for w in m.words} == {"diffusion"}


def test_metadata_only_filter_is_taken_at_its_word_by_the_digest() -> None:
    """The digest's score treats it like a comparison: a ceiling of 0, so its matches are in."""
    index = DayIndex(META_PAPERS)
    for query in ("has:code", "category:cs.CL has:code", "author:lovelace OR category:cs.*"):
        assert ceiling(parse_filter(query), index.stats) == 0.0, query
    with_word = parse_filter("diffusion has:code")
    assert ceiling(with_word, index.stats) == ceiling(parse_filter("diffusion"), index.stats)


def test_author_index_narrows_by_name_words_before_checking_names() -> None:
    """A lookup intersects postings of folded name words; only papers with every word are
    checked for one name holding them in order."""
    index = DayIndex(META_PAPERS)
    assert set(iter_bits(index.name_postings["muller"])) == {0, 1}
    assert "mullerova" in index.name_postings and "müller" not in index.name_postings
    assert set(iter_bits(index.category_postings["cs.*"])) == {0, 1, 2}
    assert set(iter_bits(index.category_postings["cs.lg"])) == {0, 1}
    assert set(iter_bits(index.has_code)) == {0, 2}
    assert index.names[4] == ()  # the dumped paper
