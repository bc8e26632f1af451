"""The reference matcher: one filter, one paper, evaluated directly.

Slow by design (it is the evaluate-every-pair loop), and simple enough to
trust: tests check that the indexed matcher agrees with it, and bench/match.py
measures the indexed matcher against it.
"""

from __future__ import annotations

from newsletter.filters.ast import (
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
from newsletter.filters.docs import (
    DEFAULT_FIELDS,
    FIELDS,
    Field,
    PaperDoc,
    category_keys,
    compare,
    field_text,
    name_has,
    name_words,
    numeric_value,
    phrase_at,
)
from newsletter.filters.docs import (
    analyse as analyse_field,
)
from newsletter.filters.tokens import stem


def analyse(doc: PaperDoc) -> dict[str, Field]:
    return {f: analyse_field(field_text(doc, f)) for f in FIELDS}


def matches(node: Node, doc: PaperDoc, fields: dict[str, Field] | None = None) -> bool:
    """Does ``node`` match ``doc``? Pass ``fields`` (from ``analyse``) to reuse the tokenization."""
    fields = fields if fields is not None else analyse(doc)
    match node:
        case Term(word, fld, exact, prefix):
            for f in (fld,) if fld else DEFAULT_FIELDS:
                fa = fields[f]
                if prefix and any(w.startswith(word) for w in fa.words):
                    return True
                if exact and word in fa.words:
                    return True
                if not exact and not prefix and stem(word) in fa.counts:
                    return True
            return False
        case Phrase(words, fld):
            return any(
                next(phrase_at(fields[f].stems, words), None) is not None
                for f in ((fld,) if fld else DEFAULT_FIELDS)
            )
        case Compare(name, op, value):
            return compare(op, numeric_value(doc, name), value)
        case Author(words):
            return any(name_has(name_words(name), words) for name in doc.author_names)
        case Category(name):
            return any(name in category_keys(c) for c in doc.categories)
        case Has(what):
            return what == "code" and doc.has_code
        case All():
            return True
        case Not(child):
            return not matches(child, doc, fields)
        case And(children):
            return all(matches(c, doc, fields) for c in children)
        case Or(children):
            return any(matches(c, doc, fields) for c in children)
    raise TypeError(f"not a filter node: {node!r}")
