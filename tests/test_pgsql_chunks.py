"""drivers/pgsql.py DumpStream: COPY data goes out without being copied or carried between chunks, and a ``\\.``
terminator is found wherever the chunks split it (every split of a dump into two and three chunks)."""

from __future__ import annotations

import random

from drivers import pgsql

from .test_pg_restore_safety import TRICKY

COPIES = (
    b"--\n-- PostgreSQL database cluster dump\n--\n\nCREATE ROLE postgres;\n\\connect db\n"
    b"COPY public.e (a) FROM stdin;\n\\.\n"  # empty: the terminator is the data's first line
    b"COPY public.t (a) FROM stdin;\nx\n\\\\.\n\\\\\n.\n\\.x\nDROP ROLE r;\n\\.\n"  # look-alikes in the data
    b"DROP DATABASE gone;\n"
    b"COPY public.u (a) FROM stdin;\n1\n\\.\n"
    b"COPY public.v (a) FROM stdin;\n\\N\n\\.\n"
    b"-- PostgreSQL database dump complete\n\n\\connect other\nCOPY public.w (a) FROM stdin;\nab\n\\.\n"
    b"-- PostgreSQL database dump complete\n"
)


def _run(chunks: list[bytes]) -> tuple[bytes, list, int, int]:
    stream = pgsql.DumpStream(iter(chunks), pgsql.Plan(keep_roles={"postgres"}))
    out = b"".join(stream)
    assert stream.finished and stream.offset == len(out) and stream.lines == out.count(b"\n")
    return out, [(e.kind, e.db, e.line, e.end) for e in stream.events], stream.offset, stream.lines


def test_every_split_in_two_and_three_gives_the_same_stream():
    for dump in (COPIES, TRICKY):
        reference = _run([dump])
        for i in range(len(dump) + 1):
            assert _run([dump[:i], dump[i:]]) == reference, i
        rnd = random.Random(17)
        for _ in range(400):
            i, j = sorted(rnd.randrange(len(dump) + 1) for _ in range(2))
            assert _run([dump[:i], dump[i:j], dump[j:]]) == reference, (i, j)


def test_copy_data_is_not_rewritten_and_statements_after_it_are():
    out, events, _, _ = _run([COPIES])
    assert b"\\\\.\n\\\\\n.\n\\.x\nDROP ROLE r;\n\\.\n" in out  # data as it was, its DROP ROLE too
    assert b"\nDROP DATABASE IF EXISTS gone;\n" in out  # the statement after the data is seen
    assert [(k, d) for k, d, _, _ in events] == [("start", "db"), ("drop", "gone"), ("done", "db"),
                                                 ("start", "other"), ("done", "other")]


def test_table_data_goes_out_as_the_chunks_came_in():
    """A chunk of COPY data alone goes out as the same object (nothing copied)."""
    head = b"--\n-- PostgreSQL database cluster dump\n--\n\n\\connect db\nCOPY public.t (a) FROM stdin;\n"
    data = [b"row %d\n" % i * 1000 for i in range(5)]
    stream = pgsql.DumpStream(iter([head, *data, b"\\.\n"]), pgsql.Plan())
    out = list(stream)
    assert out[0] == head
    assert all(a is b for a, b in zip(out[1:6], data, strict=True))
    assert out[6:] == [b"\\.\n"]
