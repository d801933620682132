"""The store's write lock (``StoreBase._tx``): a waiting writer gets in between another process's short
transactions, gives up with "database is locked" after its busy timeout, and nested calls are savepoints."""
import sqlite3
import subprocess
import sys

import pytest

from annotator.store import Store

# Another process writing like the publisher: short transactions, each holding the write lock for a while, with a
# 5 ms gap after each. argv: database, transactions, seconds each holds the lock.
HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
for k in range(int(sys.argv[2])):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO lock_log (who) VALUES ('holder')")
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
    conn.execute("COMMIT")
    time.sleep(0.005)
"""


def holder(store: Store, transactions: int, hold: float) -> subprocess.Popen:
    """Start HOLDER on the store's file; returns while its first transaction holds the write lock."""
    with store._tx():
        store.db.execute("CREATE TABLE lock_log (id INTEGER PRIMARY KEY, who TEXT)")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store.path), str(transactions), str(hold)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "holding\n"
    return proc


def test_waiting_writer_gets_in_between_short_transactions(store):
    """SQLite's busy handler sleeps up to 100 ms between tries and mostly misses the 5 ms gaps; the store
    polls every millisecond and gets in at one of the next few gaps, long before the holder is done."""
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


def test_writer_gives_up_after_its_busy_timeout_and_the_connection_stays_usable(db_path):
    with Store(db_path, busy_timeout=0.2) as store:
        proc = holder(store, 1, 3.0)  # one transaction holding the lock for 3 s
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                with store._tx():
                    store.db.execute("INSERT INTO lock_log (who) VALUES ('waiter')")
            assert not store.db.conn.in_transaction and store._scalar("PRAGMA busy_timeout") == 200
        finally:
            proc.wait(30)
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
