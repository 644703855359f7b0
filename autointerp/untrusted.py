"""Text from outside the program - typed by a user, sent to the server, or read from a corpus - and
where it leaves.

One policy for text coming **in**: it must be valid Unicode. Non-UTF-8 bytes on the command line
(Python keeps them as lone surrogates), on standard input, or lone surrogates in a JSON body
(``"\\ud800"`` is valid JSON but no character) are refused with one sentence naming the first bad
position, never replaced: a replacement character would silently change what the model runs on and
what gets searched, and the corpus loader already refuses non-UTF-8 files the same way.

Text going **out** keeps what it is wherever the format can carry it (JSON, the database), and is
made visible where it cannot: control characters from an untrusted corpus are not well-formed XML
(GraphML) and would drive the user's terminal (``\\x1b[2J`` clears it). They become the Unicode
control pictures (U+2400 block: ``\\x00`` -> ``␀``, ``\\x1b`` -> ``␛``), the same idea as the
``⏎``/``⇥`` the pages and the terminal already show for newlines and tabs. The terminal gets one
rendering, :func:`terminal_text`, in every command that prints stored text (corpus tokens, LLM
explanations and their errors): besides the controls it shows the bidirectional-text controls
(U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) as ``\\u202e``, since they reorder what
the terminal draws after them (a token could make the line it is on read backwards). Where one
token must stay on one line and be read back exactly (the explainer's prompts, the DOT export),
:func:`escape_token` writes backslash escapes instead.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import BinaryIO

from autointerp.errors import UserError

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 controls (all of them, newline and tab included: the caller keeps those it wants), DEL, and
# the C1 controls (0x80-0x9f: some terminals read 0x9b as CSI).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Bidirectional-text controls: invisible, they reorder how a terminal draws the rest of the line.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Characters XML 1.0 cannot hold at all (not even as &#...; references); tab, newline, CR are fine.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def check_unicode(text: str, what: str, from_bytes: bool = False) -> str:
    """``text`` unchanged if it is valid Unicode; else one sentence saying where it is not.
    ``from_bytes``: the text was decoded from bytes with ``surrogateescape`` (argv), so a surrogate
    stands for an undecodable byte."""
    bad = _SURROGATE.search(text)
    if bad is None:
        return text
    code = ord(bad.group())
    if from_bytes and 0xDC80 <= code <= 0xDCFF:
        raise UserError(
            f"{what} is not valid UTF-8: byte 0x{code - 0xDC00:02x} at character "
            f"{bad.start()} cannot be decoded."
        )
    raise UserError(
        f"{what} is not valid Unicode: it holds the lone surrogate \\u{code:04x} at "
        f"character {bad.start()}."
    )


#: Every environment variable autointerp reads (a test checks the source for others). Text from the
#: environment is text coming in like any other: Python keeps undecodable bytes as lone surrogates,
#: which would reach an LLM request, a URL or the database and fail there, after work was done.
ENVIRONMENT = (
    "AUTOINTERP_CACHE",
    "AUTOINTERP_DB",
    "AUTOINTERP_EXPLAINER_MODEL",
    "AUTOINTERP_KILL_AFTER",
    "AUTOINTERP_KILL_AFTER_CHECKPOINTS",
    "AUTOINTERP_KILL_RAY_WORKER_ONCE",
    "AUTOINTERP_PROMPTS",
    "AUTOINTERP_SIMULATOR_MODEL",
    "CORPUS",
    "HF_HUB_OFFLINE",
    "MODEL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_BASE_URLS",
)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """One sentence for the first variable of :data:`ENVIRONMENT` that is not valid UTF-8, before
    any work (an LLM call, a run row) is done."""
    values = os.environ if environ is None else environ
    for name in ENVIRONMENT:
        value = values.get(name)
        if value is not None:
            check_unicode(value, f"The environment variable {name}", from_bytes=True)


def read_text(stream: BinaryIO | None = None, what: str = "The text on standard input") -> str:
    """All of standard input (or ``stream``) decoded as UTF-8, strictly (a byte-order mark is
    dropped).
    """
    data = (stream or sys.stdin.buffer).read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} is not valid UTF-8: byte 0x{data[exc.start]:02x} at byte "
            f"{exc.start} cannot be decoded."
        ) from exc


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if 0xD800 <= code <= 0xDFFF or code in (0xFFFE, 0xFFFF):
        return "\ufffd"
    return f"\\x{code:02x}"


def visible_controls(text: str, keep: str = "") -> str:
    """Control characters (except those in ``keep``) as visible pictures: safe to print on a
    terminal.
    """
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _picture(m), text)


def terminal_text(text: str) -> str:
    """One line of untrusted text for the terminal: newlines and tabs as ``⏎``/``⇥``, other controls
    as pictures (ESC, CR, BEL: ``␛``, ``␍``, ``␇``; C1 controls such as U+0085: ``\\x85``), and the
    bidirectional-text controls as ``\\u202e``. Every command that prints stored text prints it
    through here."""
    line = visible_controls(text.replace("\n", "⏎").replace("\t", "⇥"))
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def xml_text(text: str) -> str:
    """Text XML 1.0 can hold: characters it forbids become their control pictures (tab, newline, CR
    stay)."""
    if not _NOT_XML.search(text):
        return text
    return _NOT_XML.sub(_picture, text)


_PICTURES_AS_ESCAPES = {0x2400 + code: f"\\x{code:02x}" for code in range(0x20)} | {0x2421: "\\x7f"}


def escaped_pictures(text: str) -> str:
    """Control pictures as ``\\xNN`` escapes, for renderers whose fonts lack the pictures
    (matplotlib's DejaVu)."""
    return text.translate(_PICTURES_AS_ESCAPES)


def escape_token(token: str) -> str:
    """Make whitespace and control characters visible and keep one token per line."""
    out = []
    for ch in token:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
