"""The project as an installed tool: pyproject's `annotator` command from another folder, the default state
folder outside the clone, and the quick commands free of heavy imports (their times: benchmarks/cli_startup.py)."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# cleannet_core.atomic (stdlib only: the export's atomic file write) may load; the model modules may not.
HEAVY = ("torch", "torchvision", "streamlit", "sklearn", "pandas", "numpy", "cleannet_core.classifier",
         "annotator.pipeline")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A throwaway venv that sees this interpreter's packages (a .pth file) and has this clone installed
    editable with pip, as `make install` does: returns its `annotator` script."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-e", str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(REPO.glob("*.egg-info")), "the install left build files in the clone"
    return venv / "bin" / "annotator"


@pytest.mark.slow
def test_installed_command_works_from_another_folder(installed, tmp_path):
    """From a project folder outside the clone: no --db puts the database in the per-user data folder
    ($XDG_DATA_HOME/annotator), never in the clone; relative paths are the user's; --db and $ANNOTATOR_DB win."""
    project = tmp_path / "birds"
    for cls, colour in (("owl", (200, 120, 40)), ("jay", (40, 90, 220))):
        (project / "images" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (colour[0], colour[1] + 8 * i, colour[2])).save(project / "images" / cls / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k != "ANNOTATOR_DB"}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), ANNOTATOR_ADMIN_PASSWORD="pw-123456-long")

    def run(*args, extra=None):
        done = subprocess.run([str(installed), *args], cwd=project, env={**env, **(extra or {})}, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    state_before = sorted((REPO / "data").rglob("*"))
    assert "admin" in run("init")
    assert "8 added" in run("ingest", "--folder", "images")
    run("classes", "--verify", "owl")
    run("users", "add", "ann", "--role", "annotator", "--password", "pw-ann-123456")
    status = json.loads(run("status", "--json"))
    db = tmp_path / "xdg" / "annotator" / "annotator.db"
    assert Path(status["database"]) == db and db.exists()
    assert (status["images"], status["classes_verified"]) == (8, 1)
    assert status["worker"]["next_round"] == {"due": True, "reason": "no model yet", "verdicts_since_model": 0,
                                              "retrain_every": 50, "waiting_for": 0}
    run("export", "--out", "train.csv", "--format", "train")
    lines = (project / "train.csv").read_text().splitlines()
    assert lines[0] == "path,label,weight" and len(lines) == 9
    assert all(line.startswith(str(project / "images")) and line.endswith(",1") for line in lines[1:])
    assert sorted((REPO / "data").rglob("*")) == state_before  # nothing written into the clone
    other = tmp_path / "other.db"
    assert json.loads(run("--db", str(other), "status", "--json"))["images"] == 0
    assert json.loads(run("status", "--json", extra={"ANNOTATOR_DB": str(other)}))["database"] == str(other)
    assert "Usage: annotator" in run("--help")


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["users", "list"], ["classes"],
                                  ["export", "--out", "-"]])
def test_quick_commands_import_nothing_heavy(tmp_path, args):
    """status, users, classes and export load no torch, streamlit, pandas or numpy: they start in well under a
    second (benchmarks/cli_startup.py records the times; no timed test)."""
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr))\n"
            "from annotator.cli import main\n"
            f"sys.argv = ['annotator', '--db', {str(tmp_path / 'a.db')!r}, *{args!r}]\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
