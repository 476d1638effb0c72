"""Perl ``s/regex/replacement/flags`` expressions, as ``--edit`` takes them, on Python's ``re``.

virt-customize feeds each line of the file, newline included, through a Perl
expression. We accept the substitution form people write (any delimiter,
bracketing pairs such as ``s{a}{b}``, ``$1``/``${1}``/``\\1``/``$&`` in the
replacement, flags ``g i m s x``) and translate the few pattern constructs whose
spelling differs in Python (``\\z``, ``\\Z``, ``\\h``, ``(?<name>``, ``\\k<name>``,
POSIX classes, ``\\Q..\\E``). What cannot be translated faithfully (``/e``, other
Perl code, variable interpolation) is refused with a clear message.
Differences that remain are documented in docs/operations.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["PerlSubst", "parse_subst"]

_PAIRS = {"{": "}", "(": ")", "[": "]", "<": ">"}
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_POSIX = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": r" \t\n\r\f\v", "blank": r" \t", "punct": r"!-/:-@\[-`{-~", "xdigit": "0-9A-Fa-f",
    "word": r"\w", "cntrl": r"\x00-\x1f\x7f", "print": r"\x20-\x7e", "graph": r"\x21-\x7e",
}


@dataclass(frozen=True)
class PerlSubst:
    """A compiled substitution; ``apply`` edits text line by line like ``perl -pe``."""

    source: str
    regex: re.Pattern[str]
    pieces: tuple[str | int | None, ...]  # literal text, or a group number (None = $&)
    count: int  # 0 = every match (/g), 1 = first

    def _replace(self, m: re.Match[str]) -> str:
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
            else:
                out.append(m.group(piece or 0) or "")
        return "".join(out)

    def apply_line(self, line: str) -> str:
        return self.regex.sub(self._replace, line, count=self.count)

    def apply(self, text: str) -> str:
        """Apply to every line (each keeping its newline), as Perl's -p loop does."""
        lines = re.findall(r"[^\n]*\n|[^\n]+\Z", text)
        return "".join(self.apply_line(line) for line in lines)


def _split_parts(expr: str) -> tuple[str, str, str]:
    """Split ``s<d>pat<d>repl<d>flags`` (or ``s{pat}{repl}flags``) honouring backslash escapes."""
    if len(expr) < 2 or expr[0] != "s" or expr[1].isalnum() or expr[1].isspace():
        raise UsageError(f"only s/regex/replacement/flags expressions are supported, got {expr!r}")
    open_d = expr[1]
    close_d = _PAIRS.get(open_d, open_d)

    def scan(start: int, closer: str, opener: str) -> int:
        depth, i = 0, start
        while i < len(expr):
            c = expr[i]
            if c == "\\":
                i += 2
                continue
            if opener != closer and c == opener:
                depth += 1
            elif c == closer:
                if depth == 0:
                    return i
                depth -= 1
            i += 1
        raise UsageError(f"unterminated s/// expression {expr!r}")

    end_pat = scan(2, close_d, open_d)
    pattern = expr[2:end_pat]
    if open_d in _PAIRS:
        rest = expr[end_pat + 1:].lstrip()
        if not rest or rest[0] not in _PAIRS:
            raise UsageError(f"expected a bracketed replacement after s{open_d}…{close_d} in {expr!r}")
        r_open, r_close = rest[0], _PAIRS[rest[0]]
        offset = len(expr) - len(rest)
        end_rep = scan(offset + 1, r_close, r_open)
        replacement = expr[offset + 1:end_rep]
    else:
        end_rep = scan(end_pat + 1, close_d, open_d)
        replacement = expr[end_pat + 1:end_rep]
    flags = expr[end_rep + 1:]
    if open_d not in _PAIRS:
        # An escaped delimiter stands for itself in both halves.
        pattern = pattern.replace("\\" + open_d, re.escape(open_d) if open_d in ".^$*+?|\\" else open_d)
        replacement = replacement.replace("\\" + open_d, open_d)
    return pattern, replacement, flags


def _translate_pattern(pat: str, multiline: bool) -> str:  # noqa: PLR0912, PLR0915 - one tokenizer loop reads best
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pat):
        c = pat[i]
        if c == "\\" and i + 1 < len(pat):
            nxt = pat[i + 1]
            if nxt == "Q":
                end = pat.find("\\E", i + 2)
                literal = pat[i + 2:] if end < 0 else pat[i + 2:end]
                out.append(re.escape(literal))
                i = len(pat) if end < 0 else end + 2
                continue
            repl = {"z": r"\Z", "Z": r"(?=\n?\Z)", "h": r"[ \t]", "H": r"[^ \t]", "A": r"\A"}.get(nxt)
            if nxt == "k" and pat[i + 2:i + 3] in "<{'":
                close = {"<": ">", "{": "}", "'": "'"}[pat[i + 2]]
                end = pat.index(close, i + 3)
                out.append(f"(?P={pat[i + 3:end]})")
                i = end + 1
                continue
            if nxt in "GKRXvV":
                raise UsageError(f"the Perl regex escape \\{nxt} has no Python equivalent")
            out.append(repl if repl and not in_class else pat[i:i + 2])
            i += 2
            continue
        if in_class:
            m = re.match(r"\[:(\^?)(\w+):\]", pat[i:])
            if m:
                if m.group(2) not in _POSIX or m.group(1):
                    raise UsageError(f"unsupported POSIX class [:{m.group(1)}{m.group(2)}:]")
                out.append(_POSIX[m.group(2)])
                i += len(m.group(0))
                continue
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            # a ']' right after '[' or '[^' is literal
            for lead in ("^", "]"):
                if pat[i:i + 1] == lead:
                    out.append(lead)
                    i += 1
            continue
        elif pat.startswith("(?<", i) and pat[i + 3:i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        elif c == "^" and multiline:
            # Perl's /m '^' does not match after a trailing newline at the very end; Python's does.
            out.append(r"(?:^(?!\Z))")
            i += 1
            continue
        elif c in "$@" and pat[i + 1:i + 2].isalpha() and c == "@":
            raise UsageError("Perl array interpolation (@name) in a regex is not supported")
        out.append(c)
        i += 1
    return "".join(out)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "e": "\x1b", "a": "\a", "0": "\0"}


def _parse_replacement(rep: str, groups: int, named: dict[str, int]) -> tuple[str | int | None, ...]:  # noqa: PLR0912
    pieces: list[str | int | None] = []
    buf: list[str] = []

    def group(n: int) -> None:
        if n > groups:
            raise UsageError(f"the replacement refers to group {n} but the regex has {groups}")
        pieces.extend(["".join(buf), n])
        buf.clear()

    i = 0
    while i < len(rep):
        c = rep[i]
        if c == "\\" and i + 1 < len(rep):
            nxt = rep[i + 1]
            if nxt.isdigit() and nxt != "0":
                group(int(nxt))
            elif nxt in "ULulEQ":
                raise UsageError(f"case-changing escape \\{nxt} in the replacement is not supported")
            else:
                buf.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if c == "$":
            m = re.match(r"\$(?:(\d+)|\{(\d+)\}|(&)|\+\{(\w+)\})", rep[i:])
            if m:
                if m.group(3):
                    pieces.extend(["".join(buf), None])
                    buf.clear()
                elif m.group(4):
                    if m.group(4) not in named:
                        raise UsageError(f"the replacement refers to unknown group {m.group(4)!r}")
                    group(named[m.group(4)])
                else:
                    group(int(m.group(1) or m.group(2)))
                i += len(m.group(0))
                continue
            if i + 1 < len(rep):
                raise UsageError(f"Perl variable interpolation ({rep[i:i + 8]}…) in the replacement "
                                 "is not supported; escape a literal $ as \\$")
        if c == "@" and i + 1 < len(rep) and (rep[i + 1].isalpha() or rep[i + 1] == "_"):
            raise UsageError("Perl array interpolation (@name) in the replacement is not supported; "
                             "escape a literal @ as \\@")
        buf.append(c)
        i += 1
    pieces.append("".join(buf))
    return tuple(p for p in pieces if p != "")


def parse_subst(expr: str) -> PerlSubst:
    """Compile a Perl substitution or raise UsageError naming what is wrong."""
    expr = expr.strip()
    pattern, replacement, flag_text = _split_parts(expr)
    flags = 0
    count = 1
    for f in flag_text:
        if f == "g":
            count = 0
        elif f in _FLAGS:
            flags |= _FLAGS[f]
        elif f == "e":
            raise UsageError("the /e flag (evaluate Perl code) is not supported")
        else:
            raise UsageError(f"unknown or unsupported regex flag {f!r} in {expr!r}")
    translated = _translate_pattern(pattern, bool(flags & re.MULTILINE))
    try:
        regex = re.compile(translated, flags)
    except re.error as exc:
        raise UsageError(f"bad regex {pattern!r}: {exc}") from exc
    pieces = _parse_replacement(replacement, regex.groups, dict(regex.groupindex))
    return PerlSubst(expr, regex, pieces, count)


EditFn = Callable[[str], str]
