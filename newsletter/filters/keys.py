"""The index keys a filter needs: what each word or phrase is counted under, in which
fields, and the anchors a presearch checks before evaluating a filter at all. Shared by
the in-memory index (``index``) and the stored one (``stored``)."""

from __future__ import annotations

import itertools

from newsletter.filters.ast import And, Node, Or, Phrase, Term
from newsletter.filters.docs import DEFAULT_FIELDS
from newsletter.filters.tokens import stem


def plain_key(leaf: Term | Phrase) -> str | None:
    """The index key a word or short phrase is counted under, or None when it has none
    (prefixes and exact words: counted by word; phrases of three words or more: where
    their pairs chain up; see ``DayIndex.leaf_tf``)."""
    if isinstance(leaf, Term):
        return None if leaf.prefix or leaf.exact else stem(leaf.word)
    if len(leaf.words) == 1:
        return stem(leaf.words[0])
    if len(leaf.words) == 2:
        return f"{stem(leaf.words[0])} {stem(leaf.words[1])}"
    return None


def leaf_fields(leaf: Term | Phrase) -> tuple[str, ...]:
    return (leaf.field,) if leaf.field else DEFAULT_FIELDS


def phrase_keys(words: tuple[str, ...]) -> list[str]:
    """Index keys a phrase needs: its stem, or each adjacent pair of stems."""
    stems = [stem(w) for w in words]
    if len(stems) == 1:
        return stems
    return [f"{a} {b}" for a, b in itertools.pairwise(stems)]


def anchors(node: Node) -> frozenset[tuple[str, str]] | None:
    """Keys (field, stem) one of which must occur for ``node`` to match; None: can't tell."""
    match node:
        case Term(word, _, _, prefix):
            if prefix:
                return None
            # An exact word needs its stem too, and stems are what the index keeps.
            return frozenset((f, stem(word)) for f in leaf_fields(node))
        case Phrase(words):
            # Every adjacent pair must occur; the longest is likely the rarest.
            key = max(phrase_keys(words), key=len)
            return frozenset((f, key) for f in leaf_fields(node))
        case And(children):
            known = [a for c in children if (a := anchors(c)) is not None]
            return min(known, key=len) if known else None
        case Or(children):
            union: set[tuple[str, str]] = set()
            for child in children:
                a = anchors(child)
                if a is None:
                    return None
                union |= a
            return frozenset(union)
    return None
