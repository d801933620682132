"""Deployment defaults: `annotator serve` listens on loopback unless told otherwise and never prints
$ANNOTATOR_ADMIN_PASSWORD; the lead 'admin' is created only in a database without a lead (never by a page
load beside the project's own leads)."""
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from browser_kit import free_port, stop, wait_healthy
from helpers import APP, REPO

from annotator import auth
from annotator.cli import cli
from annotator.store import Store

ENV_PASSWORD = "from-the-environment-1"


def listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    found.add(address)
    return found


@pytest.mark.real_scrypt  # the serve process hashes at the product's cost
def test_serve_listens_on_loopback_only_and_never_prints_the_environment_password(tmp_path):
    db = tmp_path / "state" / "annotator.db"
    port = free_port()
    env = dict(os.environ, ANNOTATOR_ADMIN_PASSWORD=ENV_PASSWORD, PYTHONUNBUFFERED="1")
    out = tmp_path / "serve.log"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "annotator", "--db", str(db), "serve", "--port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert listening(port) == {"0100007F"}  # 127.0.0.1, nothing on 0.0.0.0 or ::
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # serve stops its worker and app on SIGTERM
        stop(proc)
    text = out.read_text()
    assert "admin / (the password in $ANNOTATOR_ADMIN_PASSWORD)" in text and ENV_PASSWORD not in text
    assert "http://localhost:" in text
    with Store(db) as store:
        assert auth.authenticate(store, "admin", ENV_PASSWORD)


def test_init_prints_a_generated_password_but_never_the_environment_one(tmp_path, monkeypatch):
    runner = CliRunner()
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", ENV_PASSWORD)
    res = runner.invoke(cli, ["--db", str(tmp_path / "a" / "annotator.db"), "init"])
    assert res.exit_code == 0 and ENV_PASSWORD not in res.output and "$ANNOTATOR_ADMIN_PASSWORD" in res.output
    monkeypatch.delenv("ANNOTATOR_ADMIN_PASSWORD")
    res = runner.invoke(cli, ["--db", str(tmp_path / "b" / "annotator.db"), "init"])
    password = res.output.rsplit("with password: ", 1)[1].strip()
    with Store(tmp_path / "b" / "annotator.db") as store:
        assert auth.authenticate(store, "admin", password)


def test_no_admin_is_created_beside_a_project_lead(tmp_path, monkeypatch):
    db = tmp_path / "state" / "annotator.db"
    with Store(db) as store:
        auth.add_user(store, "alice", "lead", "alice-password")  # a project whose lead is not called admin
    monkeypatch.setenv("ANNOTATOR_DB", str(db))
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", ENV_PASSWORD)
    at = AppTest.from_file(APP, default_timeout=60).run()  # an anonymous page load
    assert not at.exception and [t.key for t in at.text_input] == ["login_name", "login_password"]
    res = CliRunner().invoke(cli, ["--db", str(db), "init"])
    assert res.exit_code == 0 and "created lead" not in res.output
    with Store(db) as store:
        assert [(u["name"], u["role"]) for u in store.list_users()] == [("alice", "lead")]
