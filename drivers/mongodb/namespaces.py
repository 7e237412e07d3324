"""mongorestore's namespace options: ``--nsInclude``/``--nsExclude`` patterns and ``--nsFrom``/``--nsTo`` renames.

A pattern's ``*`` matches any characters (dots too); in a rename, ``$name$`` in ``--nsFrom`` captures text that
the same ``$name$`` puts back in ``--nsTo``, and each ``*`` there is carried over to the ``*`` of ``--nsTo`` in the
same place (as mongorestore, the two must have as many ``*``; every ``$name$`` of ``--nsTo`` must be captured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stash_runner.errors import BadInput

_VARIABLE = re.compile(r"\$([A-Za-z0-9_]+)\$")


def _pattern(text: str, *, capture: bool) -> re.Pattern[str]:
    out, pos, names, stars = [], 0, set(), 0
    for m in re.finditer(r"\$([A-Za-z0-9_]+)\$|\*", text):
        out.append(re.escape(text[pos:m.start()]))
        if m.group(0) == "*":
            stars += 1
            out.append(f"(?P<s{stars}>.*?)" if capture else ".*")
        elif capture:
            name = m.group(1)
            if name in names:
                raise BadInput(f"--mongo-args: --nsFrom {text!r}: ${name}$ is used twice")
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
        stars = iter(range(1, self.target.count("*") + 1))
        return re.sub(r"\$([A-Za-z0-9_]+)\$|\*",
                      lambda v: m.group(f"v_{v.group(1)}" if v.group(1) else f"s{next(stars)}"), self.target)

    def check(self, source: str) -> None:
        """mongorestore's checks of a pair: as many ``*`` on both sides, no ``$name$`` that is not captured."""
        if source.count("*") != self.target.count("*"):
            raise BadInput(f"--mongo-args: --nsFrom {source!r} and --nsTo {self.target!r}: different numbers of *")
        for name in _VARIABLE.findall(self.target):
            if f"v_{name}" not in self.source.groupindex:
                raise BadInput(f"--mongo-args: --nsTo {self.target!r}: ${name}$ is not captured by its "
                               f"--nsFrom {source!r}")


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
        renames = [Rename(_pattern(f, capture=True), t) for f, t in zip(ns_from, ns_to, strict=True)]
        for rename, source in zip(renames, ns_from, strict=True):
            rename.check(source)
        return cls([_pattern(p, capture=False) for p in include], [_pattern(p, capture=False) for p in exclude],
                   renames)

    def wanted(self, ns: str) -> bool:
        if self.include and not any(p.match(ns) for p in self.include):
            return False
        return not any(p.match(ns) for p in self.exclude)

    def target(self, ns: str) -> str:
        """The namespace ``ns`` is restored as. As mongorestore: the last --nsFrom/--nsTo pair that matches wins."""
        for rename in reversed(self.renames):
            renamed = rename.apply(ns)
            if renamed is not None:
                return renamed
        return ns
