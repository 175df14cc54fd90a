"The installed `dataalchemy` command, run as a user runs it: a separate process."
import shutil, subprocess, sys
from pathlib import Path
import dataalchemy

EXE = Path(sys.executable).parent / "dataalchemy"
EXE = str(EXE) if EXE.exists() else shutil.which("dataalchemy")


def run(*args, cwd=None):
    assert EXE, "the dataalchemy console script is not installed"
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd)


def test_version():
    r = run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"dataalchemy {dataalchemy.__version__}"


def test_config_precedence_from_cwd_and_env(tmp_path):
    (tmp_path / "settings.ini").write_text("[llm]\nmodel = from-file\n")
    r = run("config", "-s", "llm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("llm.model"))
    assert "from-file" in line and "file:" in line
