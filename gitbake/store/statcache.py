"""The stat cache: (dev, inode, size, mtime_ns, ctime_ns) -> digest, so an unchanged file is not re-hashed.

Git's index trick, as DVC's state DB and git-annex's inode cache copy it. Two rules keep it honest:

- **Racy files are not cached.** A file modified within `RACY_NS` of the moment we started hashing could
  change again without its mtime moving (coarse filesystem clocks), so it is hashed again next time.
- **A cache is only a hint.** Any sqlite error is a miss, never a failure of the operation.

It also remembers the stat of each object as written, so materialising can trust an object whose size
and mtime have not moved since, and re-hash one that has (an in-place edit through a link).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

RACY_NS = 1_000_000_000  # 1 s: covers filesystems with coarse timestamps (ext4's jiffies, FAT's 2 s aside)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (dev, ino)
);
CREATE TABLE IF NOT EXISTS objects (
    digest TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL
);
"""


class StatCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                self._db = db
            except sqlite3.Error:
                return None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------------------ working files
    def lookup(self, st: os.stat_result) -> str | None:
        db = self._conn()
        if db is None:
            return None
        try:
            row = db.execute(
                "SELECT digest FROM files WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND ctime_ns=?",
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
            ).fetchone()
        except sqlite3.Error:
            return None
        return str(row[0]) if row else None

    def record(self, st: os.stat_result, digest: str, started_ns: int) -> bool:
        """Remember `digest` for the file of `st`, unless it is racy (see module doc). Returns whether kept."""
        # mtime is what a write moves; ctime stays in the key, so even a write hidden by `touch -d` misses
        if st.st_mtime_ns >= started_ns - RACY_NS:
            return False
        db = self._conn()
        if db is None:
            return False
        try:
            db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest),
            )
        except sqlite3.Error:
            return False
        return True

    # ----------------------------------------------------------------------------------- objects
    def object_trusted(self, digest: str, st: os.stat_result) -> bool:
        db = self._conn()
        if db is None:
            return False
        try:
            row = db.execute(
                "SELECT 1 FROM objects WHERE digest=? AND dev=? AND ino=? AND size=? AND mtime_ns=?",
                (digest, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
            ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    def record_object(self, digest: str, st: os.stat_result) -> None:
        db = self._conn()
        if db is None:
            return
        try:
            db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                (digest, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
            )
        except sqlite3.Error:
            pass

    def forget_object(self, digest: str) -> None:
        db = self._conn()
        if db is None:
            return
        try:
            db.execute("DELETE FROM objects WHERE digest=?", (digest,))
        except sqlite3.Error:
            pass
