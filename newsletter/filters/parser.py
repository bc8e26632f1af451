"""Parse a topic filter into a tree; a mistake raises FilterSyntaxError at its column.

Grammar (operators in capitals; lower-case "and" is just a word)::

    query    := or
    or       := and ("OR" and)*
    and      := unary (["AND"] unary)*          adjacent terms: implicit AND
    unary    := ("NOT" | "-") unary | primary
    primary  := "(" or ")" | "*" | compare | meta | [field ":"] atom | field ":" "(" or ")"
    atom     := word | word "*" | "=" word | '"' words '"'
    compare  := ("upvotes" | "authors") op integer | "date" op YYYY-MM-DD
    op       := ">=" | "<=" | ">" | "<" | "="
    field    := "title" | "abstract" | "org"
    meta     := "author:" name | "category:" category | "has:" "code"
    name     := word | '"' words '"'        whole words of one author's name, in order
    category := archive ["." subject] | archive ".*"      cs.CL, hep-th, cs.*
    archive  := letter (letter | "-")*      subject likewise; any case

``author:``, ``category:`` and ``has:`` filter on a paper's metadata: each takes one
value (no parentheses, no ``*`` or ``=`` on a name), and none is a word to score or
highlight. Messages are written for the person typing the filter, not for programmers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from newsletter.errors import FilterSyntaxError
from newsletter.filters.ast import (
    COMPARISONS,
    HAS_VALUES,
    META_FIELDS,
    NUMERIC_FIELDS,
    TEXT_FIELDS,
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
)
from newsletter.filters.docs import name_words
from newsletter.filters.tokens import tokens

MAX_QUERY_CHARS = 500
MAX_DEPTH = 20  # nesting; deeper is a typo or an attack, not a research interest
_COMPARE_RE = re.compile(r"(upvotes|authors|date)(>=|<=|>|<|=)(\S*)", re.IGNORECASE)
_FIELD_RE = re.compile(r"([A-Za-z]+):")
_SPECIAL = '()"'
# An arXiv category: archive, then optionally "." and a subject class (cs.CL, hep-th,
# physics.comp-ph), or "archive.*" for every subject of the archive. Checked lower-cased.
_CATEGORY_RE = re.compile(r"[a-z][a-z-]*(?:\.(?:[a-z][a-z-]*|\*))?")
# Archives whose every category has a subject ("category:cs" alone would find nothing),
# with one of their categories to show.
_SUBJECT_ARCHIVES = {
    "cs": "cs.CL", "econ": "econ.EM", "eess": "eess.IV", "math": "math.OC", "nlin": "nlin.CD",
    "physics": "physics.optics", "q-bio": "q-bio.NC", "q-fin": "q-fin.ST", "stat": "stat.ML",
}  # fmt: skip
_EXAMPLES = {"author": 'author:lovelace or author:"Ada Lovelace"', "category": "category:cs.CL"}


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # WORD PHRASE LPAREN RPAREN AND OR NOT MINUS STAR COMPARE FIELD
    text: str
    col: int  # 1-based


def _lex(query: str) -> list[_Tok]:
    def fail(col: int, message: str) -> FilterSyntaxError:
        return FilterSyntaxError(query=query, column=col, message=message)

    out: list[_Tok] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        col = i + 1
        if c.isspace():
            i += 1
        elif c in "()":
            out.append(_Tok("LPAREN" if c == "(" else "RPAREN", c, col))
            i += 1
        elif c == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise fail(col, "this quote is never closed")
            out.append(_Tok("PHRASE", query[i + 1 : end], col))
            i = end + 1
        elif c == "-" and i + 1 < n and not query[i + 1].isspace():
            out.append(_Tok("MINUS", c, col))
            i += 1
        else:
            end = i
            while end < n and not query[end].isspace() and query[end] not in _SPECIAL:
                end += 1
            word = query[i:end]
            if (m := _COMPARE_RE.fullmatch(word)) is not None:
                out.append(_Tok("COMPARE", word, col))
            elif (m := _FIELD_RE.match(word)) is not None:
                out.append(_Tok("FIELD", m[1].lower(), col))
                end = i + m.end()
            elif word in ("AND", "OR", "NOT"):
                out.append(_Tok(word, word, col))
            elif word == "*":
                out.append(_Tok("STAR", word, col))
            else:
                out.append(_Tok("WORD", word, col))
            i = end
    return out


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.toks = _lex(query)
        self.pos = 0
        self.depth = 0

    def fail(self, col: int, message: str) -> FilterSyntaxError:
        return FilterSyntaxError(query=self.query, column=col, message=message)

    def peek(self) -> _Tok | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def end_col(self) -> int:
        return len(self.query.rstrip()) + 1

    def parse(self) -> Node:
        if not self.toks:
            raise self.fail(1, 'the filter is empty: type a word, a "phrase" or *')
        node = self.parse_or()
        tok = self.peek()
        if tok is not None:  # only a stray ")" can stop the loops early
            raise self.fail(tok.col, "this ')' has no matching '('")
        return node

    def parse_or(self) -> Node:
        children = [self.parse_and()]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.take()
            if self.peek() is None or self.peek().kind in ("OR", "AND", "RPAREN"):  # type: ignore[union-attr]
                raise self.fail(tok.col, "OR needs something on both sides")
            children.append(self.parse_and())
        return _join(Or, children)

    def parse_and(self) -> Node:
        tok = self.peek()
        if tok is not None and tok.kind in ("AND", "OR"):
            raise self.fail(tok.col, f"{tok.kind} needs something on both sides")
        children = [self.parse_unary()]
        while (tok := self.peek()) is not None and tok.kind not in ("OR", "RPAREN"):
            if tok.kind == "AND":
                self.take()
                nxt = self.peek()
                if nxt is None or nxt.kind in ("OR", "AND", "RPAREN"):
                    raise self.fail(tok.col, "AND needs something on both sides")
            children.append(self.parse_unary())
        return _join(And, children)

    def parse_unary(self) -> Node:
        tok = self.take()
        if tok.kind in ("NOT", "MINUS"):
            nxt = self.peek()
            if nxt is None or nxt.kind in ("OR", "AND", "RPAREN"):
                word = "NOT" if tok.kind == "NOT" else "-"
                raise self.fail(tok.col, f"{word} needs something after it, as in NOT video")
            return Not(self.nested(self.parse_unary, tok.col))
        return self.parse_primary(tok)

    def nested(self, parse, col: int) -> Node:  # type: ignore[no-untyped-def]
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(col, f"too deeply nested (more than {MAX_DEPTH} levels)")
        try:
            return parse()
        finally:
            self.depth -= 1

    def parse_primary(self, tok: _Tok, field: str | None = None) -> Node:
        kind = tok.kind
        if kind == "LPAREN":
            if (nxt := self.peek()) is not None and nxt.kind == "RPAREN":
                raise self.fail(tok.col, "empty parentheses: put words inside")
            if nxt is None:
                raise self.fail(tok.col, "this '(' is never closed")
            node = self.nested(self.parse_or, tok.col)
            close = self.peek()
            if close is None or close.kind != "RPAREN":
                raise self.fail(tok.col, "this '(' is never closed")
            self.take()
            return _with_field(node, field) if field else node
        if kind == "RPAREN":
            raise self.fail(tok.col, "this ')' has no matching '('")
        if kind == "STAR":
            if field:
                raise self.fail(tok.col, f"{field}:* is not a search; use * alone for everything")
            return All()
        if kind == "COMPARE":
            if field:
                raise self.fail(tok.col, f"{field}: cannot hold a comparison")
            return self.compare(tok)
        if kind == "FIELD":
            return self.field(tok)
        if kind == "PHRASE":
            words = tuple(tokens(tok.text))
            if not words:
                raise self.fail(tok.col, "empty quotes: put words inside")
            return Phrase(words, field)
        if kind == "WORD":
            return self.word(tok, field)
        raise self.fail(tok.col, f"{tok.text} needs something on both sides")

    def field(self, tok: _Tok) -> Node:
        if tok.text not in TEXT_FIELDS + META_FIELDS:
            known = ", ".join(f"{f}:" for f in TEXT_FIELDS + META_FIELDS)
            raise self.fail(tok.col, f"unknown field '{tok.text}:'; use {known}")
        nxt = self.peek()
        adjacent = nxt is not None and nxt.col == tok.col + len(tok.text) + 1
        if tok.text in META_FIELDS:
            return self.meta(tok, self.take() if adjacent else None)
        if not adjacent or nxt.kind not in ("WORD", "PHRASE", "LPAREN", "STAR", "COMPARE"):  # type: ignore[union-attr]
            raise self.fail(
                tok.col, f"{tok.text}: needs a word right after it, as in {tok.text}:diffusion"
            )
        return self.parse_primary(self.take(), field=tok.text)

    def word(self, tok: _Tok, field: str | None) -> Node:
        text, col = tok.text, tok.col
        exact = text.startswith("=")
        prefix = text.endswith("*")
        core = text[1 if exact else 0 : -1 if prefix else None]
        if "*" in core:
            raise self.fail(
                col + (1 if exact else 0) + core.index("*"),
                "a * can only end a word, as in diffus*",
            )
        if exact and prefix:
            raise self.fail(col, "a word cannot be both exact (=) and a prefix (*)")
        words = tokens(core)
        if not words:
            raise self.fail(col, f"'{text}' has no letters or digits to look for")
        if len(words) > 1:
            if exact or prefix:
                mark = "=" if exact else "*"
                raise self.fail(col, f"'{mark}' works on single words; '{core}' is several")
            return Phrase(tuple(words), field)
        if prefix and len(words[0]) < 2:
            raise self.fail(col, "a wildcard needs at least 2 letters before the *")
        return Term(words[0], field, exact=exact, prefix=prefix)

    def meta(self, tok: _Tok, value: _Tok | None) -> Node:
        """``author:``, ``category:`` or ``has:`` and the token right after it (None: a
        space or nothing came after the colon)."""
        name = tok.text
        example = _EXAMPLES.get(name, "has:code")
        if value is None or value.kind not in ("WORD", "PHRASE", "STAR", "COMPARE"):
            if value is not None and value.kind == "LPAREN":
                raise self.fail(
                    value.col, f"{name}: takes one value, not a group: write {name}:a OR {name}:b"
                )
            raise self.fail(tok.col, f"{name}: needs a value right after it, as in {example}")
        text, col = value.text, value.col
        if name == "author":
            if value.kind == "WORD" and text.startswith("="):
                raise self.fail(col, "author: already matches whole words exactly; drop the =")
            if value.kind != "PHRASE" and "*" in text:
                raise self.fail(
                    col + text.index("*"),
                    "author: matches whole words of a name, so * does not work there; "
                    "write the whole word, as in author:lovelace",
                )
            words = name_words(text)
            if not words:
                raise self.fail(col, f"author: needs a name to look for, as in {example}")
            return Author(words)
        if name == "category":
            raw = text.strip() if value.kind == "PHRASE" else text
            key = raw.lower()
            if not raw.isascii() or _CATEGORY_RE.fullmatch(key) is None:
                shown = text if len(text) <= 30 else text[:29] + "…"
                archive = key.rstrip("*").rstrip(".")
                hint = (
                    f"for every {archive} category write {archive}.*"
                    if "*" in key and _CATEGORY_RE.fullmatch(archive) and "." not in archive
                    else "write one like cs.CL or hep-th, or cs.* for every cs category"
                )
                raise self.fail(col, f"'{shown}' is not an arXiv category; {hint}")
            if key in _SUBJECT_ARCHIVES:
                raise self.fail(
                    col,
                    f"'{text}' needs a subject, as in {_SUBJECT_ARCHIVES[key]}; "
                    f"for every {key} category write {key}.*",
                )
            return Category(key)
        what = text.strip().lower() if value.kind == "PHRASE" else text.lower()
        if what in HAS_VALUES:
            return Has(what)
        accepted = " or ".join(HAS_VALUES)
        raise self.fail(col, f"has: accepts only {accepted}, as in has:code")

    def compare(self, tok: _Tok) -> Node:
        m = _COMPARE_RE.fullmatch(tok.text)
        assert m is not None
        name, op, raw = m[1].lower(), m[2], m[3]
        value_col = tok.col + len(m[1]) + len(op)
        if name == "date":
            try:
                return Compare(name, op, date.fromisoformat(raw))
            except ValueError:
                raise self.fail(
                    value_col, "date needs a day like 2024-01-31, as in date>=2024-01-31"
                ) from None
        if not raw.isdecimal() or len(raw) > 9:  # isdigit() admits "²", which int() rejects
            raise self.fail(value_col, f"{name} needs a whole number, as in {name}{op}5")
        return Compare(name, op, int(raw))


def _join(kind: type[And] | type[Or], children: list[Node]) -> Node:
    flat: list[Node] = []
    for child in children:
        flat.extend(child.children if isinstance(child, kind) else (child,))
    return flat[0] if len(flat) == 1 else kind(tuple(flat))


def _with_field(node: Node, field: str) -> Node:
    """``title:(a OR b)`` means ``title:a OR title:b``: push the field down to each word."""
    match node:
        case Term() | Phrase():
            return node if node.field else type(node)(*_replace_field(node, field))
        case Not(child):
            return Not(_with_field(child, field))
        case And(children):
            return And(tuple(_with_field(c, field) for c in children))
        case Or(children):
            return Or(tuple(_with_field(c, field) for c in children))
    return node


def _replace_field(node: Term | Phrase, field: str) -> tuple[object, ...]:
    if isinstance(node, Term):
        return (node.word, field, node.exact, node.prefix)
    return (node.words, field)


def parse_filter(query: str) -> Node:
    """Parse ``query``; raises FilterSyntaxError with a 1-based column and a plain message."""
    if len(query) > MAX_QUERY_CHARS:
        raise FilterSyntaxError(
            query=query,
            column=MAX_QUERY_CHARS + 1,
            message=f"a filter is at most {MAX_QUERY_CHARS} characters",
        )
    for i, c in enumerate(query):
        if c in "\r\n\x00":
            raise FilterSyntaxError(
                query=query, column=i + 1, message="a filter is one line of text"
            )
    return _Parser(query).parse()


__all__ = ["COMPARISONS", "NUMERIC_FIELDS", "parse_filter"]
