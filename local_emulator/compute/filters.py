"""The list ``filter`` language of Compute Engine, the subset real clients use.

Accepted: comparisons ``field = value``, ``!=``, ``:`` (has / wildcard), ``<``, ``>``, and the older
regex form ``field eq 'regex'`` / ``field ne 'regex'``; values bare or quoted; ``*`` wildcards in
``=``/``:``; ``AND`` / ``OR`` / ``NOT``, parentheses, and juxtaposition (implicit AND). Fields are
dotted paths into the instance resource (``labels.env``, ``status``, ``name``,
``scheduling.provisioningModel``). Anything else is a 400, never silently "match all".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from local_emulator.compute import errors

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<lp>\() | (?P<rp>\)) |
      (?P<kw>AND|OR|NOT)(?=[\s(]) |
      (?P<field>[A-Za-z_][\w.\-]*)\s*(?P<op>!=|=|:|<|>|\beq\b|\bne\b)\s*
        (?P<val>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s()]+)
    )""",
    re.VERBOSE,
)


def _bad(filter_text: str, why: str) -> errors.ApiError:
    return errors.invalid(f"Invalid value for field 'filter': '{filter_text}'. {why}")


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _bad(text, f"Cannot parse near position {pos}.")
        pos = m.end()
        if m.group("lp"):
            out.append(("(", None))
        elif m.group("rp"):
            out.append((")", None))
        elif m.group("kw"):
            out.append((m.group("kw"), None))
        else:
            val = m.group("val")
            if val[0] in "\"'" and val[-1] == val[0] and len(val) >= 2:
                val = val[1:-1].replace('\\"', '"')
            out.append(("cmp", (m.group("field"), m.group("op"), val)))
    return out


def _lookup(resource: dict[str, Any], path: str) -> Any:
    cur: Any = resource
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def _compare(field: str, op: str, value: str) -> Predicate:
    def pred(resource: dict[str, Any]) -> bool:
        got = _lookup(resource, field)
        if op == ":" and value == "*":
            return got is not None
        if got is None:
            return op in ("!=", "ne")
        text = str(got).lower() if isinstance(got, bool) else str(got)
        if op in ("=", ":"):
            return fnmatch.fnmatchcase(text, value) if "*" in value else text == value
        if op == "!=":
            return text != value
        if op in ("eq", "ne"):
            hit = re.fullmatch(value, text) is not None
            return hit if op == "eq" else not hit
        try:
            a, b = float(text), float(value)
        except ValueError:
            a, b = text, value  # type: ignore[assignment]
        return a < b if op == "<" else a > b

    return pred


def compile_filter(text: str | None) -> Predicate:
    if not text or not text.strip():
        return lambda _r: True
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos][0] if pos < len(toks) else None

    def term() -> Predicate:
        nonlocal pos
        kind = peek()
        if kind == "NOT":
            pos += 1
            inner = term()
            return lambda r: not inner(r)
        if kind == "(":
            pos += 1
            inner = disjunction()
            if peek() != ")":
                raise _bad(text, "Unbalanced parentheses.")
            pos += 1
            return inner
        if kind == "cmp":
            field, op, val = toks[pos][1]
            pos += 1
            if op in ("eq", "ne"):
                try:
                    re.compile(val)
                except re.error as e:
                    raise _bad(text, f"Bad regular expression: {e}.") from e
            return _compare(field, op, val)
        raise _bad(text, f"Unexpected {kind or 'end of filter'}.")

    def conjunction() -> Predicate:
        nonlocal pos
        parts = [term()]
        while peek() in ("AND", "(", "cmp", "NOT"):
            if peek() == "AND":
                pos += 1
            parts.append(term())
        return lambda r: all(p(r) for p in parts)

    def disjunction() -> Predicate:
        nonlocal pos
        parts = [conjunction()]
        while peek() == "OR":
            pos += 1
            parts.append(conjunction())
        return lambda r: any(p(r) for p in parts)

    result = disjunction()
    if pos != len(toks):
        raise _bad(text, "Trailing input.")
    return result
