"""mongorestore's namespace options: ``--nsInclude``/``--nsExclude`` patterns and ``--nsFrom``/``--nsTo`` renames.

A pattern's ``*`` matches any characters (dots too); in a rename, ``$name$`` in ``--nsFrom`` captures text that
the same ``$name$`` puts back in ``--nsTo``, and a ``*`` there is carried over to the ``*`` of ``--nsTo``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stash_runner.errors import BadInput

_VARIABLE = re.compile(r"\$([A-Za-z0-9_]+)\$")


def _pattern(text: str, *, capture: bool) -> re.Pattern[str]:
    out, pos, names = [], 0, set()
    for m in re.finditer(r"\$([A-Za-z0-9_]+)\$|\*", text):
        out.append(re.escape(text[pos:m.start()]))
        if m.group(0) == "*":
            out.append("(?P<star>.*)" if capture and "star" not in names else ".*")
            names.add("star")
        elif capture:
            name = m.group(1)
            if name in names:
                raise BadInput(f"--nsFrom {text!r}: ${name}$ is used twice")
            names.add(name)
            out.append(f"(?P<v_{name}>.*?)")
        else:
            out.append(re.escape(m.group(0)))
        pos = m.end()
    out.append(re.escape(text[pos:]))
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


@dataclass
class Rename:
    source: re.Pattern[str]
    target: str

    def apply(self, ns: str) -> str | None:
        m = self.source.match(ns)
        if m is None:
            return None

        def var(v: re.Match[str]) -> str:
            key = f"v_{v.group(1)}"
            if key not in m.re.groupindex:
                raise BadInput(f"--nsTo {self.target!r}: ${v.group(1)}$ is not captured by its --nsFrom")
            return m.group(key)

        out = _VARIABLE.sub(var, self.target)
        if "*" in out:
            out = out.replace("*", m.group("star") if "star" in m.re.groupindex else "", 1)
        return out


@dataclass
class Namespaces:
    """Which namespaces of an archive to restore, and under which names."""

    include: list[re.Pattern[str]] = field(default_factory=list)
    exclude: list[re.Pattern[str]] = field(default_factory=list)
    renames: list[Rename] = field(default_factory=list)

    @classmethod
    def from_args(cls, include: list[str], exclude: list[str], ns_from: list[str], ns_to: list[str]) -> Namespaces:
        for value in (*include, *exclude, *ns_from, *ns_to):
            if "." not in value:
                raise BadInput(f"--mongo-args: namespace {value!r} must be <database>.<collection> (wildcards: *)")
        return cls([_pattern(p, capture=False) for p in include], [_pattern(p, capture=False) for p in exclude],
                   [Rename(_pattern(f, capture=True), t) for f, t in zip(ns_from, ns_to, strict=True)])

    def wanted(self, ns: str) -> bool:
        if self.include and not any(p.match(ns) for p in self.include):
            return False
        return not any(p.match(ns) for p in self.exclude)

    def target(self, ns: str) -> str:
        """The namespace ``ns`` is restored as (the first rename that matches wins)."""
        for rename in self.renames:
            renamed = rename.apply(ns)
            if renamed is not None:
                return renamed
        return ns
