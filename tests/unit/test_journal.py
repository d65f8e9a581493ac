"""The ledger journal (billing/journal.py) and the idempotent ledger write it relies on: a torn
last line is skipped, a replay writes nothing twice, committed segments are deleted, and the
segments of a live process are never taken, those of a killed one always are."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeproxy.billing.journal import Journal
from edgeproxy.billing.ledger import GenerationRecord, Ledger
from edgeproxy.billing.store import open_driver

LEDGER = "/srv/ledger.db"  # the journal only hashes it: which books its records belong to


def rec(gen_id: str, cost: int = 7, account: str = "acct_a", key: str = "key_a",
        app: str | None = "app") -> GenerationRecord:
    return GenerationRecord(gen_id, account, key, "m/x", "acme", 10, 5, 0, 0, cost, False, False,
                            120, 30, 90, True, False, "stop", None, app, None, int(time.time()))


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    return str(request.getfixturevalue("pg_url"))


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    j = Journal(str(tmp_path), LEDGER)
    assert j.orphans() == []
    j.start()
    records = [rec("gen-1"), rec("gen-2", app="x\ny\udcff")]  # a newline and a bad header byte
    for r in records:
        j.append(r)
    seg = j._current
    assert seg is not None
    os.write(seg.fd, b'["gen-3","acct_a","key_a","m/x","ac')  # killed mid-write
    j.close(committed=False)  # as a killed process leaves it: the file, no lock

    again = Journal(str(tmp_path), LEDGER)
    [orphan] = again.orphans()
    with orphan:
        assert [r.id for r in orphan.records] == ["gen-1", "gen-2"]
        assert orphan.records[1].app == "x\ny?"
        assert orphan.torn == 1
        orphan.done()
    assert files(tmp_path) == []


def test_segments_are_trimmed_once_committed(tmp_path: Path) -> None:
    j = Journal(str(tmp_path), LEDGER)
    j.orphans()
    j.start()
    assert j.seal() == 0 and len(files(tmp_path)) == 1  # nothing journaled: no new segment
    j.append(rec("gen-1"))
    j.append(rec("gen-2"))
    mark = j.seal()  # a flush takes gen-1 and gen-2
    j.append(rec("gen-3"))  # settled while that flush is being written
    assert len(files(tmp_path)) == 2
    j.trim(mark)  # the flush committed
    [left] = files(tmp_path)
    assert j.pending() == 1
    j.close(committed=False)
    [orphan] = Journal(str(tmp_path), LEDGER).orphans()
    with orphan:
        assert [r.id for r in orphan.records] == ["gen-3"] and orphan.path.endswith(left)
        orphan.done()
    j = Journal(str(tmp_path), LEDGER)
    j.start()
    j.append(rec("gen-4"))
    j.close(committed=True)  # a clean stop after the last flush
    assert files(tmp_path) == []


_OWNER = textwrap.dedent("""
    import sys, time
    from edgeproxy.billing.journal import Journal
    from edgeproxy.billing.ledger import GenerationRecord
    j = Journal(sys.argv[1], sys.argv[2])
    j.start()
    for i in range(3):
        j.append(GenerationRecord(f"gen-{i}", "acct_a", "key_a", "m/x", "acme", 1, 1, 0, 0, 5,
                                  False, False, 1, 1, 1, False, False, "stop", None, None, None,
                                  int(time.time())))
    j.seal()  # two segments: one sealed, one current
    j.append(GenerationRecord("gen-3", "acct_a", "key_a", "m/x", "acme", 1, 1, 0, 0, 5, False,
                              False, 1, 1, 1, False, False, "stop", None, None, None, 0))
    print("ready", flush=True)
    sys.stdin.read()
""")


def test_a_live_owners_segments_are_skipped_a_dead_ones_replayed(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", _OWNER, str(tmp_path), LEDGER],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as owner:
        try:
            assert owner.stdout is not None and owner.stdout.readline() == b"ready\n"
            assert len(files(tmp_path)) == 2
            assert Journal(str(tmp_path), LEDGER).orphans() == []  # alive: its locks hold
        finally:
            owner.kill()
    # Dead: another ledger's journal in the same directory still never takes these records.
    assert Journal(str(tmp_path), "/srv/other.db").orphans() == []
    found = Journal(str(tmp_path), LEDGER).orphans()
    assert sorted(r.id for o in found for r in o.records) == [f"gen-{i}" for i in range(4)]
    # While this process replays them, a third one starting meanwhile does not take them.
    assert Journal(str(tmp_path), LEDGER).orphans() == []
    for o in found:
        with o:
            o.done()
    assert files(tmp_path) == []


async def test_replay_is_idempotent(tmp_path: Path, ledger_url: str) -> None:
    """A replay that is interrupted after its commit (the segment not yet deleted) and run
    again inserts nothing twice and charges nothing twice."""
    ledger = Ledger(open_driver(ledger_url))
    await ledger.open()
    try:
        acct = await ledger.create_account("alice")
        _, key = await ledger.create_key(acct.id, "k")
        j = Journal(str(tmp_path / "journal"), ledger_url)
        j.orphans()
        j.start()
        batch = [rec(f"gen-{i}", 10 + i, acct.id, key.id) for i in range(300)]
        for r in batch:
            j.append(r)
        j.close(committed=False)
        inserted = []
        for _ in range(2):  # the first replayer dies before deleting the segment
            found = Journal(str(tmp_path / "journal"), ledger_url).orphans()
            records = [r for o in found for r in o.records]
            assert len(records) == 300
            for o in found:
                with o:
                    pass  # released, not done(): its replayer died before deleting it
            inserted.append(len(await ledger.write(records)))
        assert inserted == [300, 0]
        assert await ledger.write(batch[:10] + batch[:10]) == []  # and the live queue's copy
        assert await ledger.count_generations() == 300
        total = sum(10 + i for i in range(300))
        assert (await ledger.account(acct.id)).usage_micro == total  # type: ignore[union-attr]
        assert (await ledger.key(key.id)).usage_micro == total  # type: ignore[union-attr]
    finally:
        await ledger.close()


async def test_a_refused_record_does_not_hold_back_the_others(ledger_url: str) -> None:
    """A record the database refuses for its data is set apart; the rest are written. Text no
    database takes (NUL for PostgreSQL, a lone surrogate from a header) is made storable."""
    ledger = Ledger(open_driver(ledger_url))
    await ledger.open()
    try:
        acct = await ledger.create_account("alice")
        _, key = await ledger.create_key(acct.id, "k")
        batch = [rec(f"gen-{i}", 5, acct.id, key.id) for i in range(9)]
        batch[4] = rec("gen-bad", 2**70, acct.id, key.id)  # beyond any BIGINT
        batch[6] = rec("gen-6", 5, acct.id, key.id, app="a\x00b\udcff")
        inserted, refused = await ledger.write_apart(batch)
        assert len(inserted) == 8 and [r.id for r, _ in refused] == ["gen-bad"]
        assert (await ledger.account(acct.id)).usage_micro == 40  # type: ignore[union-attr]
        stored = await ledger.generation("gen-6")
        assert stored is not None and stored.app == "ab?"
    finally:
        await ledger.close()
