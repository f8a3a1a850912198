#!/usr/bin/env python3
"""Which b-trees a SQLite journal's commits write: reads a copy of the journal's WAL and the journal itself, and
prints frames (pages written) per commit and per b-tree, and per packet given the packets per commit.

    LGSP_BENCH_DB=/tmp/bench.db LGSP_BENCH_PACKETS=8192 LGSP_BENCH_ONLY=packets:16 \\
        cargo bench -p lgsp-journal --bench append &
    while sleep 0.1; do cp /tmp/bench.db-wal /tmp/wal.copy 2>/dev/null; done   # until the bench ends
    python3 benches/wal-frames.py /tmp/wal.copy /tmp/bench.db

The WAL starts over after each checkpoint, so a copy holds the commits since the last one. Pages are named by
SQLite's `dbstat` table of the journal after the run (a page freed and reused meanwhile may be named wrongly).
"""
import collections
import sqlite3
import struct
import sys


def main(wal_path, db_path):
    wal = open(wal_path, "rb").read()
    _magic, _version, page_size, _ckpt, salt1, salt2, _c1, _c2 = struct.unpack(">IIIIIIII", wal[:32])
    frame = 24 + page_size
    owner = {}
    for name, pageno, pagetype in sqlite3.connect(db_path).execute("SELECT name, pageno, pagetype FROM dbstat"):
        owner[pageno] = f"{name} ({pagetype})"
    commits, frames, written, current = 0, 0, collections.Counter(), []
    offset = 32
    while offset + frame <= len(wal):
        page, commit_size, s1, s2 = struct.unpack(">IIII", wal[offset : offset + 16])
        if (s1, s2) != (salt1, salt2):
            break
        frames += 1
        current.append(page)
        if commit_size:
            commits += 1
            written.update(owner.get(p, "?") for p in current)
            current = []
        offset += frame
    if not commits:
        sys.exit("no whole commit in the WAL copy")
    packets = written.get("journal_bodies (overflow)", 0)
    print(f"page size {page_size}, {commits} commits, {frames / commits:.1f} frames a commit", end="")
    print(f", {packets / commits:.1f} packets a commit (bodies' overflow pages)" if packets else "")
    for name, n in written.most_common():
        each = f", {n / packets:5.2f} a packet" if packets else ""
        print(f"{name:48} {n / commits:6.1f} a commit{each}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
