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
    for f in (pkg / "templates").rglob("*"):                 # the review page
        if f.is_file(): assert f"dataalchemy/templates/{f.relative_to(pkg / 'templates').as_posix()}" in names, f
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


RUN_NB = r'''
import re, sys
from fastcore.nbio import read_nb
from execnb.shell import CaptureShell
nb = read_nb(sys.argv[1])
skip = re.compile(r'^#\|\s*(eval:\s*false|slow|cuda)\b', re.M)
for c in nb.cells:                                   # as nbdev-test: no `eval: false`, slow or GPU cells, nothing exported twice
    if c.cell_type == 'code' and (skip.search(c.source) or re.search(r'^#\|\s*default_exp', c.source, re.M)): c.source = ''
sh = CaptureShell()
sh.run_all(nb, exc_stop=True)
import dataalchemy; print('dataalchemy from', dataalchemy.__file__)
'''


def test_notebooks_run_from_an_empty_folder_with_only_the_wheel(wheel, tmp_path):
    "The Colab situation: the built wheel in a fresh environment (no checkout), every notebook run from an empty folder."
    import site, venv
    env_dir = tmp_path / 'venv'
    venv.create(env_dir, with_pip=False)
    py = env_dir / 'bin' / 'python'
    sp = Path(subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             capture_output=True, text=True, check=True).stdout.strip())
    with zipfile.ZipFile(wheel.filename) as z: z.extractall(sp)                # the wheel, unpacked as pip would
    deps = [p for p in site.getsitepackages() if 'site-packages' in p]           # its dependencies: this environment's
    (sp / 'zz_deps.pth').write_text('\n'.join(deps) + '\n')                     # (after the wheel, without its editable finder)
    runner = tmp_path / 'run_nb.py'; runner.write_text(RUN_NB)
    failed = []
    for nbf in sorted((ROOT / 'nbs').glob('*.ipynb')):
        work = tmp_path / 'work' / nbf.stem; work.mkdir(parents=True)
        (work / nbf.name).write_bytes(nbf.read_bytes())                           # the notebook alone, as a Colab upload
        env = {k: v for k, v in __import__('os').environ.items() if not k.startswith('PYTHONPATH')}
        r = subprocess.run([str(py), str(runner), nbf.name], cwd=work, capture_output=True, text=True, env=env, timeout=900)
        where = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''
        if r.returncode != 0 or str(sp) not in where:
            failed.append(f"{nbf.name}: rc {r.returncode} {where}\n{(r.stderr or r.stdout)[-1500:]}")
    assert not failed, '\n\n'.join(failed)
