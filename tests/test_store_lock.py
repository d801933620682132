"""The store's write lock (``StoreBase._tx``): a waiting writer gets in between another process's short
transactions, gives up with "database is locked" after its busy timeout, and nested calls are savepoints."""
import sqlite3
import subprocess
import sys
import time

import pytest

from annotator.store import Store

# Another process writing like the publisher: short transactions, each holding the write lock for a while, with a
# 5 ms gap after each. argv: database, transactions, seconds each holds the lock ("until-told": until a line
# arrives on stdin, 60 s at most, so a writer that never gives up fails its test instead of hanging it).
HOLDER = """
import select, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
for k in range(int(sys.argv[2])):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO lock_log (who) VALUES ('holder')")
    print("holding", flush=True)
    if sys.argv[3] == "until-told":
        select.select([sys.stdin], [], [], 60)
    else:
        time.sleep(float(sys.argv[3]))
    conn.execute("COMMIT")
    time.sleep(0.005)
"""


def holder(store: Store, transactions: int, hold: float | str) -> subprocess.Popen:
    """Start HOLDER on the store's file; returns while its first transaction holds the write lock."""
    with store._tx():
        store.db.execute("CREATE TABLE lock_log (id INTEGER PRIMARY KEY, who TEXT)")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.path), str(transactions), str(hold)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "holding\n"
    return proc


@pytest.mark.timing
def test_waiting_writer_gets_in_between_short_transactions(store):
    """SQLite's busy handler sleeps up to 100 ms between tries and mostly misses the 5 ms gaps; the store
    polls every millisecond and gets in at one of the next few gaps, long before the holder is done.

    How soon it gets in is the behaviour under test, so the bound stays. It counts the holder's own
    transactions (20 ms each), not seconds, so a loaded machine slows both sides alike; on an idle one the
    waiter takes the first gap, and 3 lets it miss two."""
    proc = holder(store, 100, 0.02)
    try:
        for _ in range(5):  # five waits, each while the holder keeps going
            before = store._scalar("SELECT COUNT(*) FROM lock_log")
            with store._tx():
                got_in = store._scalar("SELECT COUNT(*) FROM lock_log")
                store.db.execute("INSERT INTO lock_log (who) VALUES ('waiter')")
            assert got_in - before <= 3  # the holder committed at most 3 more transactions meanwhile
    finally:
        proc.wait(30)
    whos = [r[0] for r in store.db.execute("SELECT who FROM lock_log ORDER BY id")]
    assert whos.count("holder") == 100 and whos.count("waiter") == 5 and whos[-1] == "holder"


@pytest.mark.timing
def test_writer_gives_up_after_its_busy_timeout_and_the_connection_stays_usable(db_path):
    """The holder keeps the lock until the writer has given up, so the writer can only fail; the time it takes
    to give up is the behaviour under test. The bound, 10 s, is 50 times the 0.2 s busy timeout, yet a third
    of the store's 30 s default, which a writer that ignored its own setting would wait."""
    with Store(db_path, busy_timeout=0.2) as store:
        proc = holder(store, 1, "until-told")
        try:
            start = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                with store._tx():
                    store.db.execute("INSERT INTO lock_log (who) VALUES ('waiter')")
            assert time.monotonic() - start < 10
            assert not store.db.conn.in_transaction and store._scalar("PRAGMA busy_timeout") == 200
        finally:
            proc.communicate("release\n", timeout=70)
        with store._tx():
            store.db.execute("INSERT INTO lock_log (who) VALUES ('waiter')")
        assert [r[0] for r in store.db.execute("SELECT who FROM lock_log ORDER BY id")] == ["holder", "waiter"]


def test_nested_transaction_is_a_savepoint(store):
    with store._tx():
        store.db.execute("CREATE TABLE t (x INT)")
        store.db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError):
            with store._tx():
                store.db.execute("INSERT INTO t VALUES (2)")
                raise ValueError("inner fails")
        store.db.execute("INSERT INTO t VALUES (3)")
    assert [r[0] for r in store.db.execute("SELECT x FROM t")] == [1, 3]
