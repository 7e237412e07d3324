"""The hook templates Stash renders: Go ``text/template`` (+ sprig) over the session ``Summary``.

Stash (stashed/apimachinery ``pkg/hooks/hook.go``, ``renderHookTemplate``) renders only the ``exec.command``
elements that contain ``{{`` and ``httpPost.body``, with ``missingkey=default``, and trims the result's surrounding
white space. This is the subset of the language hook authors write, evaluated without ``eval``:

* text, ``{{ pipeline }}``, ``{{/* comment */}}``, the trim markers ``{{- `` and `` -}}``;
* field chains over the summary: ``.Name``, ``.Namespace``, ``.Invoker.Kind`` ... ``.RetryLeft``;
* string (``"..."``, raw ```...```), integer and ``true``/``false`` literals, ``( ... )`` and ``|`` pipelines;
* ``{{ if }}`` / ``{{ else if }}`` / ``{{ else }}`` / ``{{ end }}``;
* the functions ``eq ne not and or`` (Go's) and ``upper lower trim default`` (sprig's).

Anything else is a ``BadInput`` naming the template. Stash passes its ``Summary`` *struct*, not a map, so a field
the summary does not have (``.Foo``, ``.status.phase``) is an execution error in Go ("can't evaluate field"): a
failed hook, not ``<no value>`` (missingkey only applies to map keys). We do the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from stash_runner.errors import BadInput

from .spec import Summary

Value = str | int | bool | dict


@dataclass
class _Text:
    text: str


@dataclass
class _Field:
    path: tuple[str, ...]  # () is "." itself


@dataclass
class _Lit:
    value: Value


@dataclass
class _Cmd:
    """One command of a pipeline: a function call (``func`` set) or a single operand."""

    func: str | None
    args: list  # operands: _Field | _Lit | _Pipe


@dataclass
class _Pipe:
    cmds: list[_Cmd]


@dataclass
class _If:
    cond: _Pipe
    then: list = field(default_factory=list)
    orelse: list = field(default_factory=list)


def render(text: str, summary: Summary) -> str:
    """``text`` rendered over ``summary`` as Stash does; text without ``{{`` is returned untouched (Stash renders,
    and so trims, only text that contains it)."""
    if "{{" not in text:
        return text
    return _Template(text).render(summary.data()).strip()


class _Template:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items = self._split(text)  # str (text) or (action, ) tuples, trim markers applied
        self.pos = 0
        nodes, stop = self._parse_list()
        if stop is not None:
            self._fail(f"unexpected {{{{{stop[0]}}}}}")
        self.nodes = nodes

    def _fail(self, why: str) -> NoReturn:
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        raise BadInput(f"hook template {shown!r}: {why}")

    # --- lexing: text and actions ---------------------------------------------------------------------------

    def _split(self, text: str) -> list:
        out: list = []
        i = 0
        while True:
            start = text.find("{{", i)
            if start < 0:
                out.append(text[i:])
                return out
            body_start = start + 2
            # Go: a left trim marker is "{{- " ('-', then white space); "{{-3}}" is the number -3
            ltrim = text[body_start:body_start + 2] in ("- ", "-\t", "-\r", "-\n")
            if ltrim:
                body_start += 2
            end = self._action_end(text, body_start)
            body_end = end
            # Go: a right trim marker is " -}}" (white space, then '-')
            rtrim = end - 2 >= body_start and text[end - 1] == "-" and text[end - 2] in " \t\r\n"
            if rtrim:
                body_end = end - 2
            before = text[i:start]
            out.append(before.rstrip(" \t\r\n") if ltrim else before)
            out.append((text[body_start:body_end].strip(),))
            i = end + 2
            if rtrim:
                while i < len(text) and text[i] in " \t\r\n":
                    i += 1

    def _action_end(self, text: str, i: int) -> int:
        """Index of the ``}}`` closing the action whose body starts at ``i`` (strings may hold "}}")."""
        if text.startswith("/*", text_skip_ws(text, i)):
            close = text.find("*/", i)
            if close < 0:
                self._fail("unclosed comment")
            i = close + 2
        while i < len(text):
            c = text[i]
            if c in "\"`":
                i = self._string_end(text, i)
                continue
            if text.startswith("}}", i):
                return i
            if text.startswith("{{", i):
                break
            i += 1
        self._fail("unclosed action (missing }})")

    def _string_end(self, text: str, i: int) -> int:
        quote = text[i]
        j = i + 1
        while j < len(text):
            if text[j] == "\\" and quote == '"':
                j += 2
                continue
            if text[j] == quote:
                return j + 1
            if text[j] == "\n" and quote == '"':
                break
            j += 1
        self._fail("unterminated string")

    # --- parsing ------------------------------------------------------------------------------------------

    _TOKEN = re.compile(r"""\s+ | (?P<str>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`)
                            | (?P<field>\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?)
                            | (?P<num>-?\d+) | (?P<ident>[A-Za-z_]\w*) | (?P<op>[|()])""", re.X)
    _UNSUPPORTED = ("with", "range", "define", "template", "block", "break", "continue")

    def _parse_list(self) -> tuple[list, tuple | None]:
        """Nodes up to the end of input or an ``else``/``end`` action, returned as the second value."""
        nodes: list = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, str):
                if item:
                    nodes.append(_Text(item))
                continue
            body = item[0]
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    self._fail("a comment must end with */ right before }}")
                continue
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word):].strip()
            if word == "if":
                nodes.append(self._parse_if(rest))
            elif word == "end":
                return nodes, ("end",)
            elif word == "else":
                if rest.startswith("if ") or rest == "if":
                    return nodes, ("else if", rest[2:].strip())
                if rest:
                    self._fail(f"unexpected {rest!r} after else")
                return nodes, ("else",)
            elif word in self._UNSUPPORTED or word.startswith("$"):
                self._fail(f"{word!r} is not supported by stash-runner's hook templates")
            elif not body:
                self._fail("missing value for command")
            else:
                nodes.append(self._parse_pipe(body))
        return nodes, None

    def _parse_if(self, cond: str) -> _If:
        if not cond:
            self._fail("missing condition in if")
        node = _If(self._parse_pipe(cond))
        node.then, stop = self._parse_list()
        if stop is None:
            self._fail("unexpected EOF: {{ if }} without {{ end }}")
        if stop[0] == "else if":
            node.orelse = [self._parse_if(stop[1])]  # shares this if's {{ end }}
        elif stop[0] == "else":
            node.orelse, stop = self._parse_list()
            if stop is None or stop[0] != "end":
                self._fail("expected {{ end }} after {{ else }}")
        return node

    def _parse_pipe(self, src: str) -> _Pipe:
        tokens: list[tuple[str, str]] = []
        i = 0
        while i < len(src):
            m = self._TOKEN.match(src, i)
            if not m or m.end() == i:
                self._fail(f"unexpected {src[i]!r} in {{{{ {src} }}}}")
            if m.lastgroup:
                tokens.append((m.lastgroup, m.group()))
            i = m.end()
        pipe, rest = self._pipe(tokens, src)
        if rest:
            self._fail(f"unexpected {rest[0][1]!r} in {{{{ {src} }}}}")
        return pipe

    def _pipe(self, tokens: list, src: str) -> tuple[_Pipe, list]:
        cmds = []
        while True:
            cmd, tokens = self._cmd(tokens, src)
            cmds.append(cmd)
            if tokens and tokens[0] == ("op", "|"):
                tokens = tokens[1:]
                continue
            return _Pipe(cmds), tokens

    def _cmd(self, tokens: list, src: str) -> tuple[_Cmd, list]:
        func = None
        if tokens and tokens[0][0] == "ident" and tokens[0][1] not in ("true", "false"):
            func = tokens[0][1]
            if func not in _FUNCS:
                known = ", ".join(sorted(_FUNCS))
                self._fail(f'function "{func}" is unknown or not supported here (supported: {known})')
            tokens = tokens[1:]
        args: list = []
        while tokens and tokens[0] not in (("op", "|"), ("op", ")")):
            kind, text = tokens[0]
            tokens = tokens[1:]
            if kind == "op":  # "("
                inner, tokens = self._pipe(tokens, src)
                if not tokens or tokens[0] != ("op", ")"):
                    self._fail(f"unclosed ( in {{{{ {src} }}}}")
                tokens = tokens[1:]
                args.append(inner)
            elif kind == "field":
                args.append(_Field(tuple(text[1:].split(".")) if text != "." else ()))
            elif kind == "num":
                args.append(_Lit(int(text)))
            elif kind == "str":
                try:
                    args.append(_Lit(json.loads(text)))  # Go's escapes that users write are JSON's
                except ValueError:
                    self._fail(f"bad string literal {text}")
            elif kind == "raw":
                args.append(_Lit(text[1:-1]))
            elif text in ("true", "false"):
                args.append(_Lit(text == "true"))
            else:
                self._fail(f'function "{text}" must come first in a command')
        if func is None and len(args) != 1:
            self._fail(f"{'missing value' if not args else 'too many values'} in {{{{ {src} }}}}")
        return _Cmd(func, args), tokens

    # --- evaluation -------------------------------------------------------------------------------------

    def render(self, data: dict) -> str:
        out: list[str] = []
        self._exec(self.nodes, data, out)
        return "".join(out)

    def _exec(self, nodes: list, data: dict, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _If):
                self._exec(node.then if _truth(self._eval(node.cond, data)) else node.orelse, data, out)
            else:
                out.append(self._print(self._eval(node, data)))

    def _eval(self, node, data: dict) -> Value:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Field):
            value: Value = data
            for name in node.path:
                if not isinstance(value, dict):
                    self._fail(f"can't evaluate field {name} in type {_go_type(value)}")
                if name not in value:
                    self._fail(f"can't evaluate field {name} (Stash's Summary has no such field)")
                value = value[name]
            return value
        result: Value | None = None
        for i, cmd in enumerate(node.cmds):
            args = [self._eval(a, data) for a in cmd.args]
            if i > 0:
                if cmd.func is None:
                    self._fail("a non-function cannot take the pipeline's value (after |)")
                args.append(result)  # Go passes the previous command's value as the last argument
            if cmd.func is None:
                result = args[0]
            else:
                try:
                    result = _FUNCS[cmd.func](*args)
                except (TypeError, ValueError) as e:
                    self._fail(f"error calling {cmd.func}: {e}")
        assert result is not None
        return result

    def _print(self, value: Value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):
            # Go would print the struct's fields (and a pointer's address for .Invoker): never what a hook wants
            self._fail("prints a whole object; name one of its fields")
        return str(value)


def text_skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _truth(value: Value) -> bool:
    # Go's truth: false, 0 and "" are false; a struct is always true
    return True if isinstance(value, dict) else bool(value)


def _go_type(value: Value) -> str:
    return {bool: "bool", int: "int32", str: "string"}.get(type(value), "struct")


def _comparable(a: Value, b: Value) -> None:
    if isinstance(a, dict) or isinstance(b, dict):
        raise TypeError("non-comparable type")
    if _go_type(a) != _go_type(b):
        raise TypeError("incompatible types for comparison")


def _eq(first: Value, *others: Value) -> bool:
    if not others:
        raise TypeError("missing argument for comparison")
    for other in others:
        _comparable(first, other)
    return any(first == other for other in others)


def _ne(a: Value, b: Value) -> bool:
    _comparable(a, b)
    return a != b


def _and(first: Value, *rest: Value) -> Value:
    for value in (first, *rest):
        if not _truth(value):
            return value
    return value


def _or(first: Value, *rest: Value) -> Value:
    for value in (first, *rest):
        if _truth(value):
            return value
    return value


def _string(fn: Callable[[str], str]) -> Callable[[Value], str]:
    def call(value: Value) -> str:
        if not isinstance(value, str):
            raise TypeError(f"expected string; got {_go_type(value)}")
        return fn(value)

    return call


def _default(fallback: Value, *given: Value) -> Value:
    # sprig: the given value unless it is empty (missing, "", 0, false)
    return given[0] if given and _truth(given[0]) else fallback


_FUNCS: dict[str, Callable[..., Value]] = {
    "eq": _eq, "ne": _ne, "not": lambda v: not _truth(v), "and": _and, "or": _or,
    "upper": _string(str.upper), "lower": _string(str.lower), "trim": _string(str.strip), "default": _default,
}
