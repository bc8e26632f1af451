"""Text normalization shared by the corpus, the filters and the templates."""

from __future__ import annotations

import re
import unicodedata

# Accent commands → combining marks; NFC then composes "e" + U+0301 into "é".
_ACCENTS = {
    "'": "\u0301", '"': "\u0308", "`": "\u0300", "^": "\u0302", "~": "\u0303",
    "=": "\u0304", ".": "\u0307", "u": "\u0306", "v": "\u030c", "H": "\u030b",
    "c": "\u0327", "k": "\u0328", "r": "\u030a",
}  # fmt: skip
# Symbol accents take a bare or braced letter (\'e, \'{e}, \"{\i}); letter accents (\v, \c, …)
# only a braced one (\v{s}), so that \url, \cite and friends are never touched. An outer
# brace ({\'e}) is consumed only when it is closed again; a bare \i eats one space, as in TeX.
_ACCENT_RE = re.compile(
    r"""(?P<open>\{)?
        \\(?: (?P<sym>['"`^~=.])
               (?: \{\s*(?P<b1>\\[ij]|[A-Za-z])\s*\}
                 | (?P<b2>\\[ij](?![A-Za-z])|[A-Za-z]) (?:(?<=\\[ij])\ )? )
           | (?P<word>[uvHckr]) \{\s*(?P<b3>\\[ij]|[A-Za-z])\s*\} )
        (?(open)\})""",
    re.VERBOSE,
)
_SPECIALS = {"i": "ı", "j": "ȷ", "o": "ø", "O": "Ø", "l": "ł", "L": "Ł", "ss": "ß",
             "aa": "å", "AA": "Å", "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ"}  # fmt: skip
_SPECIAL_RE = re.compile(r"\{\\(" + "|".join(sorted(_SPECIALS, key=len, reverse=True)) + r")\}")
_ESCAPED_RE = re.compile(r"\\([%&_#])")
# Scraped abstracts also use \' as an escaped apostrophe ("models\' decisions",
# "model\'s"); an accent can only be meant when a letter follows and it is not a possessive.
_APOSTROPHE_RE = re.compile(r"""(?<=[A-Za-z])\\'(?=s\b)|\\(['"])(?![A-Za-z{\\])""")


def _accent(match: re.Match[str]) -> str:
    mark = _ACCENTS[match["sym"] or match["word"]]
    base = match["b1"] or match["b2"] or match["b3"]
    base = {"\\i": "i", "\\j": "j"}.get(base, base)  # í is i + acute, not dotless ı + acute
    return unicodedata.normalize("NFC", base + mark)


def latex_to_text(s: str) -> str:
    """Turn the common LaTeX escapes of the corpus into Unicode, for display only.

    ``Poincar\\'e`` → ``Poincaré``, ``na\\"{\\i}ve`` → ``naïve``, ``\\%`` → ``%``; any other
    command (``\\emph``, ``$\\alpha$``, ``{\\it x}``) is left exactly as it is.
    """
    if "\\" not in s:
        return s
    s = _APOSTROPHE_RE.sub(lambda m: m[1] or "'", s)
    s = _ACCENT_RE.sub(_accent, s)
    s = _SPECIAL_RE.sub(lambda m: _SPECIALS[m[1]], s)
    return _ESCAPED_RE.sub(r"\1", s)


# Combining marks left by NFKD: the diacritics blocks, which is where accents live.
_COMBINING_RE = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """For comparing, not display: LaTeX accents resolved, Unicode-normalized (NFKC),
    accents stripped, case-folded. "Poincar\\'e", "Poincaré" and "POINCARE" fold alike."""
    text = latex_to_text(text)
    if text.isascii():  # most abstracts: nothing to normalize
        return text.casefold()
    text = _COMBINING_RE.sub("", unicodedata.normalize("NFKD", text))
    return unicodedata.normalize("NFKC", text).casefold()


# What no name, topic or title may carry into an email, a header or a terminal: C0 and
# C1 controls and DEL (ESC starts terminal escapes), the line and paragraph separators
# (str.splitlines() breaks on them), lone surrogates (not encodable), the U+FFFE/U+FFFF
# non-characters (XML parsers refuse them) ...
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
# ... and the bidirectional controls, which reorder what a reader sees ("Trojan Source"):
# a name could make a URL read backwards.
BIDI_RE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_RE = re.compile(f"{CONTROL_RE.pattern}|{BIDI_RE.pattern}")


def no_encoded_words(text: str) -> str:
    """``text`` with every ``=?`` broken up (``= ?``), for a header: an RFC 2047 encoded
    word in a paper's title or a reader's name would be decoded by the mail client (a
    bidi control or a line break in what the reader sees) and, on Pythons without the
    fix of CVE-2024-6923, by the standard library's folding, which then wrote the decoded
    line breaks as headers of their own. No title or name means one."""
    return text.replace("=?", "= ?")


def has_unsafe(text: str) -> bool:
    """Whether ``text`` holds a control, bidi control or unencodable character."""
    return _UNSAFE_RE.search(text) is not None


def one_line(text: str) -> str:
    """Display text on one line: unsafe characters become spaces, whitespace collapses."""
    return " ".join(_UNSAFE_RE.sub(" ", text).split())


def terminal_safe(text: str) -> str:
    """``text`` with every unsafe character shown as an escape (``\\x1b``), so printing
    data to a terminal can never move the cursor, recolour it or reorder the line."""
    if not has_unsafe(text):
        return text
    return _UNSAFE_RE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def json_safe(text: str) -> str:
    """JSON text (as ``json.dumps(..., ensure_ascii=False)`` writes it) with every unsafe
    character written as a ``\\u`` escape: the same JSON to a reader of it, and nothing a
    terminal acts on. JSON escapes the C0 controls in strings itself (those left are the
    indentation's line breaks); the rest only occur inside strings, where any character
    may be escaped."""
    if not has_unsafe(text):
        return text
    return _UNSAFE_RE.sub(lambda m: m[0] if m[0] < " " else f"\\u{ord(m[0]):04x}", text)


_INVISIBLE = frozenset(("Cf", "Cn", "Co", "Cs"))  # format, unassigned, private, surrogate
_MARKS = frozenset(("Mn", "Mc", "Me"))


def visible(text: str) -> str:
    """``text`` without characters an inbox list shows as nothing or as a box (format
    characters, unassigned and private-use code points), and without combining marks
    that have nothing to combine with."""
    if text.isascii():
        return text
    kept = "".join(c for c in text if unicodedata.category(c) not in _INVISIBLE)
    while kept and unicodedata.category(kept[0]) in _MARKS:
        kept = kept[1:]
    return kept
