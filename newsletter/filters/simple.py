"""First filter language: keywords and "quoted phrases", all of which must match.

Case-insensitive, on word boundaries, over title and abstract: ``diffusion``
matches "Diffusion models" but not "diffusional"; ``"language model"``
matches the two words adjacent, in order. Several terms in one filter must
all occur (``"vision transformer" pruning``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from newsletter.errors import FilterSyntaxError

_WORD_RE = re.compile(r"\w+")
MAX_QUERY_CHARS = 500


def words(text: str) -> list[str]:
    """Case-folded, accent-insensitive word tokens (``GPT-4`` -> ``gpt``, ``4``)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return _WORD_RE.findall(text)


@dataclass(frozen=True, slots=True)
class Document:
    """A paper's text prepared once for many filters: space-delimited tokens."""

    title: str
    abstract: str

    @classmethod
    def of(cls, *, title: str, abstract: str) -> Document:
        return cls(title=f" {' '.join(words(title))} ", abstract=f" {' '.join(words(abstract))} ")


@dataclass(frozen=True, slots=True)
class Hit:
    term: str
    in_title: bool


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    query: str
    terms: tuple[str, ...]
    """Each term is a space-joined token sequence (a word, or a phrase's words)."""

    def match(self, doc: Document) -> tuple[Hit, ...]:
        """The hits when every term occurs in the title or abstract, else ()."""
        hits = []
        for term in self.terms:
            needle = f" {term} "
            in_title = needle in doc.title
            if not in_title and needle not in doc.abstract:
                return ()
            hits.append(Hit(term=term, in_title=in_title))
        return tuple(hits)


def compile_topic(query: str) -> CompiledTopic:
    """Parse a filter; raises FilterSyntaxError with the 1-based column of the problem."""
    if len(query) > MAX_QUERY_CHARS:
        raise FilterSyntaxError(
            query=query,
            column=MAX_QUERY_CHARS + 1,
            message=f"a topic is at most {MAX_QUERY_CHARS} characters",
        )
    if any(c in query for c in "\r\n\x00"):
        col = next(i for i, c in enumerate(query, 1) if c in "\r\n\x00")
        raise FilterSyntaxError(query=query, column=col, message="a topic is one line of text")
    terms: list[str] = []
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        if query[i] == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise FilterSyntaxError(
                    query=query, column=i + 1, message="this quote is never closed"
                )
            phrase = words(query[i + 1 : end])
            if not phrase:
                raise FilterSyntaxError(
                    query=query, column=i + 1, message="empty quotes: put words inside"
                )
            terms.append(" ".join(phrase))
            i = end + 1
            continue
        end = i
        while end < n and not query[end].isspace() and query[end] != '"':
            end += 1
        toks = words(query[i:end])
        if not toks:
            raise FilterSyntaxError(
                query=query,
                column=i + 1,
                message=f"{query[i:end]!r} has no letters or digits to look for",
            )
        terms.append(" ".join(toks))  # GPT-4 -> "gpt 4": the tokens adjacent
        i = end
    if not terms:
        raise FilterSyntaxError(query=query, column=1, message="a topic needs at least one word")
    return CompiledTopic(query=query, terms=tuple(dict.fromkeys(terms)))
