"""A small parser for Houdini DialogScript files, enough to check one is well formed.

DialogScript is line-oriented: ``key value...`` statements and ``key {`` blocks
(``parm``, ``group``, ``multiparm``, ``help``, ``default``, ``menu``, ``parmtag``...).
This parser tokenizes (double-quoted strings with backslash escapes, braces, words,
``#`` comments at line start), checks braces balance, and returns a tree of
:class:`Entry`. :func:`parms` walks it and returns every ``parm``/``multiparm`` with
its name, label, type and defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


class DialogScriptError(ValueError):
    pass


@dataclass
class Token:
    text: str
    line: int
    quoted: bool = False


@dataclass
class Entry:
    key: str
    args: List[str]
    children: Optional[List[Entry]] = None
    line: int = 0

    def first(self, key: str) -> Optional[Entry]:
        for c in self.children or []:
            if c.key == key:
                return c
        return None


@dataclass
class Parm:
    name: str
    label: str
    type: Optional[str]  # None for baseparm
    baseparm: bool
    defaults: List[str] = field(default_factory=list)
    kind: str = "parm"  # or "multiparm"
    children: List[Parm] = field(default_factory=list)
    tags: dict = field(default_factory=dict)


_WORD = re.compile(r'[^\s{}"]+')


def tokenize(text: str) -> List[Token]:
    tokens: List[Token] = []
    i, line, n = 0, 1, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            at_line_start = True
            continue
        if c in " \t\r":
            i += 1
            continue
        if c == "#" and at_line_start:
            while i < n and text[i] != "\n":
                i += 1
            continue
        at_line_start = False
        if c in "{}":
            tokens.append(Token(c, line))
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise DialogScriptError(f"line {line}: unterminated string")
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                if text[j] == '"':
                    break
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            tokens.append(Token("".join(buf), line, quoted=True))
            i = j + 1
        else:
            m = _WORD.match(text, i)
            assert m is not None
            tokens.append(Token(m.group(0), line))
            i = m.end()
    depth = 0
    for t in tokens:
        if not t.quoted and t.text == "{":
            depth += 1
        elif not t.quoted and t.text == "}":
            depth -= 1
            if depth < 0:
                raise DialogScriptError(f"line {t.line}: '}}' without '{{'")
    if depth:
        raise DialogScriptError(f"{depth} unclosed '{{'")
    return tokens


def _is(tok: Token, brace: str) -> bool:
    return not tok.quoted and tok.text == brace


def _parse_block(tokens: List[Token], i: int) -> Tuple[List[Entry], int]:
    """Parse entries until the matching '}' (tokens[i-1] was '{'); return (entries, index after '}')."""
    entries: List[Entry] = []
    while i < len(tokens):
        tok = tokens[i]
        if _is(tok, "}"):
            return entries, i + 1
        if _is(tok, "{"):
            children, i = _parse_block(tokens, i + 1)
            entries.append(Entry("", [], children, tok.line))
            continue
        entry = Entry(tok.text, [], None, tok.line)
        i += 1
        while (
            i < len(tokens)
            and tokens[i].line == entry.line
            and not _is(tokens[i], "{")
            and not _is(tokens[i], "}")
        ):
            entry.args.append(tokens[i].text)
            i += 1
        if i < len(tokens) and _is(tokens[i], "{") and tokens[i].line == entry.line:
            entry.children, i = _parse_block(tokens, i + 1)
        entries.append(entry)
    return entries, i


def parse(text: str) -> Entry:
    tokens = tokenize(text)
    if not tokens or not _is(tokens[0], "{"):
        raise DialogScriptError("a DialogScript starts with '{'")
    children, end = _parse_block(tokens, 1)
    if end != len(tokens):
        raise DialogScriptError(f"line {tokens[end].line}: text after the closing '}}'")
    return Entry("", [], children, 1)


def _value(entry: Optional[Entry]) -> Optional[str]:
    return entry.args[0] if entry is not None and entry.args else None


def _parm(entry: Entry) -> Parm:
    name = _value(entry.first("name"))
    label = _value(entry.first("label"))
    base = entry.first("baseparm") is not None
    ptype = _value(entry.first("type"))
    if not name:
        raise DialogScriptError(f"line {entry.line}: {entry.key} without a name")
    if label is None:
        raise DialogScriptError(f"line {entry.line}: {entry.key} {name} without a label")
    if entry.key == "parm" and not base and not ptype:
        raise DialogScriptError(f"line {entry.line}: parm {name} without a type")
    defaults: List[str] = []
    d = entry.first("default")
    if d is not None:
        if d.children:
            for c in d.children:
                defaults.extend([c.key] + c.args)
        else:
            defaults = list(d.args)
    tags = {}
    for c in entry.children or []:
        if c.key == "parmtag" and c.children:
            for t in c.children:
                tags[t.key] = t.args[0] if t.args else ""
    parm = Parm(name, label, ptype, base, defaults, entry.key, tags=tags)
    if entry.key == "multiparm":
        parm.children = [_parm(c) for c in entry.children or [] if c.key in ("parm", "multiparm")]
    return parm


def parms(root: Entry) -> List[Parm]:
    """Every parm and multiparm, groups flattened; multiparm instances as children."""
    found: List[Parm] = []

    def walk(entries: List[Entry]) -> None:
        for e in entries:
            if e.key in ("parm", "multiparm"):
                found.append(_parm(e))
            elif e.key in ("group", "groupsimple", "groupcollapsible", "groupradio") and e.children:
                if _value(e.first("name")) is None or _value(e.first("label")) is None:
                    raise DialogScriptError(f"line {e.line}: {e.key} needs a name and a label")
                walk(e.children)

    walk(root.children or [])
    return found


def all_names(found: List[Parm]) -> List[str]:
    names: List[str] = []
    for p in found:
        names.append(p.name)
        names.extend(all_names(p.children))
    return names
