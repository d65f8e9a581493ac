"""The ledger journal: every settled generation on local disk before its answer's last byte goes
out, so one that was answered survives a SIGKILL or an OOM kill of the gateway (SPEC §5.6).

    settle ─▶ append (one os.write of one JSON line, no fsync) ─▶ the writer's queue
    flush  ─▶ seal: later records go to a new segment ─▶ ledger write ─▶ trim: sealed segments
              whose records are all committed are deleted
    start  ─▶ replay: segments of processes that died are written (idempotently) and deleted

Each process writes its own segment files, `<ledger>.<pid>.<token>.<seq>.jnl`, and holds an
exclusive flock(2) on each until it deletes it. The kernel drops those locks when the process
dies however it dies, so a lock that can be taken marks a segment whose writer is gone: a starting
process replays only those, never the segments of a live worker or node sharing the directory.
`<ledger>` is a hash of the ledger's identity (the SQLite file, or PostgreSQL's host, port and
database), so nodes of different ledgers may share one directory without replaying each other's
records into the wrong books.

Not fsynced: a record survives the death of the process (it is in the page cache), not a power
loss before the kernel's writeback (README "What survives a crash").
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import os
import secrets
from types import TracebackType
from urllib.parse import urlsplit

import msgspec

from ..errors import StartupError
from .ledger import GenerationRecord, storable
from .store import Driver, PostgresDriver, SQLiteDriver

__all__ = ["Journal", "Orphan", "for_ledger"]

log = logging.getLogger("edgeproxy.billing")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GenerationRecord)
_SUFFIX = ".jnl"


def for_ledger(driver: Driver, directory: str = "") -> Journal | None:
    """The journal of a ledger: in `directory` when set, else beside a SQLite file
    (`<file>.journal`) or in `./edgeproxy-journal` for PostgreSQL (the working directory is the
    state directory in deploy/). None for an in-memory SQLite ledger: nothing outlives it."""
    if isinstance(driver, SQLiteDriver):
        if driver.path in ("", ":memory:"):
            return None
        db = os.path.abspath(driver.path)
        return Journal(directory or db + ".journal", db)
    if isinstance(driver, PostgresDriver):
        p = urlsplit(driver.dsn)  # the database's identity, without user or password
        return Journal(directory or "edgeproxy-journal",
                       f"{p.hostname or 'localhost'}:{p.port or 5432}{p.path}")
    return None


class _Segment:
    __slots__ = ("fd", "path", "records", "seq")

    def __init__(self, fd: int, path: str, seq: int) -> None:
        self.fd = fd
        self.path = path
        self.seq = seq
        self.records = 0


class Orphan:
    """A segment of a process that died, locked by this one while its records are replayed.
    `done()` deletes it; leaving the `with` block releases it either way."""

    def __init__(self, fd: int, path: str, records: list[GenerationRecord], torn: int) -> None:
        self.fd = fd
        self.path = path
        self.records = records
        self.torn = torn  # lines that did not decode: the write its process was killed in

    def done(self) -> None:
        os.unlink(self.path)

    def __enter__(self) -> Orphan:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        os.close(self.fd)


def _lock(fd: int) -> bool:
    """Take the segment's lock without waiting; False while another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    # Whoever held it may have replayed and deleted the file meanwhile.
    return os.fstat(fd).st_nlink > 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # removed by hand: nothing left to delete
    except OSError as exc:
        # Its records are committed: a later start replays it, writing nothing twice.
        log.warning("ledger journal: cannot delete %s (%s)", path, exc)


class Journal:
    def __init__(self, directory: str, ledger: str) -> None:
        self.dir = os.path.abspath(directory)
        self.tag = hashlib.sha256(ledger.encode()).hexdigest()[:16]
        self._token = secrets.token_hex(4)
        self._seq = 0
        self._current: _Segment | None = None
        self._sealed: list[_Segment] = []
        self._failing = False  # an append failed: the next one starts a fresh line

    def _name(self, what: str) -> str:
        return os.path.join(self.dir, f"{self.tag}.{what}")

    def _refused(self, exc: OSError) -> StartupError:
        return StartupError(f"cannot write the ledger journal in {self.dir} ({exc.strerror})",
                            "make that directory writable by this user, or set [storage] "
                            "journal to one that is")

    def orphans(self) -> list[Orphan]:
        """Lock and read the segments of this ledger whose process has died. Call before
        `start()`; replay each (the ledger write is idempotent), then `done()` it."""
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise self._refused(exc) from None
        found = []
        for path in sorted(glob.glob(self._name("*" + _SUFFIX))):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # replayed and deleted by another process that started meanwhile
            if not _lock(fd):
                os.close(fd)
                continue
            with open(fd, "rb", closefd=False) as fh:
                data = fh.read()
            records, torn = [], 0
            for line in data.split(b"\n"):
                if line:
                    try:
                        records.append(_decoder.decode(line))
                    except msgspec.DecodeError:
                        torn += 1
            found.append(Orphan(fd, path, records, torn))
        return found

    def start(self) -> None:
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            self._current = self._open()
        except OSError as exc:
            raise self._refused(exc) from None

    def _open(self) -> _Segment:
        while True:
            self._seq += 1
            path = self._name(f"{os.getpid()}.{self._token}.{self._seq}{_SUFFIX}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                         0o600)
            # Between the open and the lock another process that is starting may take it for a
            # dead one's, find it empty and delete it: then take a new one.
            if _lock(fd):
                return _Segment(fd, path, self._seq)
            os.close(fd)

    def append(self, rec: GenerationRecord) -> None:
        """One line, one write(2): on disk for the next process unless the machine itself dies.
        Never raises: a disk that refuses leaves the record in the writer's queue, logged."""
        seg = self._current
        if seg is None:
            return
        try:
            data = _encoder.encode_lines((rec,))
        except UnicodeEncodeError:
            data = _encoder.encode_lines((storable(rec),))
        if self._failing:
            data = b"\n" + data  # end the line a failed write may have left half-written
        try:
            if os.write(seg.fd, data) != len(data):
                raise OSError("short write (disk full?)")
        except OSError as exc:
            if not self._failing:
                log.error("ledger journal %s: cannot append (%s); records are kept in memory "
                          "until written, but a crash now would lose them", seg.path, exc)
            self._failing = True
            return
        if self._failing:
            log.warning("ledger journal %s: appending again", seg.path)
            self._failing = False
        seg.records += 1

    def seal(self) -> int:
        """Start a new segment for the records that follow; returns a mark that `trim` takes once
        every record appended before this call is in the ledger."""
        seg = self._current
        if seg is not None and seg.records:
            try:
                fresh = self._open()
            except OSError as exc:
                # Keep appending to this one; it goes once a later seal succeeds. The ledger
                # writer must never wait on the journal.
                log.error("ledger journal: cannot start a new segment in %s (%s)", self.dir, exc)
            else:
                self._sealed.append(seg)
                self._current = fresh
        return self._sealed[-1].seq if self._sealed else 0

    def trim(self, mark: int) -> None:
        """Delete the sealed segments up to `mark`: their records are committed."""
        while self._sealed and self._sealed[0].seq <= mark:
            seg = self._sealed.pop(0)
            _unlink(seg.path)  # before the close: no other process may lock it in between
            os.close(seg.fd)

    def set_apart(self, rec: GenerationRecord) -> str:
        """Keep a record the ledger refused in `<ledger>.refused` (never replayed on its own:
        renamed to end in .jnl, the next start replays it). Returns the file's path."""
        path = self._name("refused")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _encoder.encode_lines((storable(rec),)))
        finally:
            os.close(fd)
        return path

    def close(self, committed: bool) -> None:
        """Stop journaling. With everything `committed` the segments go; else they stay, for the
        next process started on this directory to replay."""
        segs = [*self._sealed, *([self._current] if self._current is not None else [])]
        self._sealed, self._current = [], None
        for seg in segs:
            if committed or not seg.records:
                _unlink(seg.path)
            os.close(seg.fd)

    def pending(self) -> int:
        """Records in segments not yet trimmed."""
        return sum(s.records for s in self._sealed) + (self._current.records
                                                        if self._current else 0)
