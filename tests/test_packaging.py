"The wheel a user installs: every module, the settings and the package data; a core install without torch."
import subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sentence-transformers", "trl", "peft", "accelerate", "detoxify", "unsloth")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("dataalchemy-*.whl")
    return zipfile.ZipFile(whl)


def test_every_module_and_data_file_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    pkg = ROOT / "dataalchemy"
    for py in pkg.rglob("*.py"):
        assert f"dataalchemy/{py.relative_to(pkg).as_posix()}" in names, py
    assert "dataalchemy/settings.ini" in names
    for f in (ROOT / "examples").rglob("*"):                  # the notebooks' examples ship too (Colab has no checkout)
        if f.is_file(): assert f"dataalchemy/examples/{f.relative_to(ROOT / 'examples').as_posix()}" in names, f
    for f in (ROOT / "data").rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            assert f"dataalchemy/data/{f.relative_to(ROOT / 'data').as_posix()}" in names, f


def test_core_install_needs_no_torch(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [l.split(":", 1)[1].strip() for l in wheel.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    core = [r for r in reqs if "extra ==" not in r]
    for r in core:
        name = r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip().lower()
        assert name not in HEAVY, f"{r} is in the core install"


def test_packaged_settings_is_the_project_settings():
    assert (ROOT / "dataalchemy" / "settings.ini").read_text() == (ROOT / "settings.ini").read_text()
