"""Give every notebook its "Open in Colab" cell (and an install cell if it has none), from pyproject's Repository URL.

    python tools/colab_cells.py            # add what is missing to nbs/*.ipynb (idempotent), print what it changed
    python tools/colab_cells.py --check    # change nothing; exit 1 if a notebook lacks either cell

The Colab cell is a markdown cell right after the title cell; the install cell follows it. A new install cell installs
the core library only: add the extras the chapter's cells import (tests/test_notebooks_meta.py checks them).
Run `nbdev-clean` afterwards as after any notebook edit.
"""
import json, re, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLAB = 'https://colab.research.google.com/github/'
BADGE = 'https://colab.research.google.com/assets/colab-badge.svg'


def repo_url() -> str:
    "The one place that holds the repository URL: pyproject.toml `[project.urls] Repository`."
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['urls']['Repository'].rstrip('/')

def colab_url(nb_name: str) -> str:
    return f"{COLAB}{repo_url().removeprefix('https://github.com/')}/blob/main/nbs/{nb_name}"

def colab_source(nb_name: str) -> str:
    return f'[![Open In Colab]({BADGE})]({colab_url(nb_name)})'

def install_source(extras: str = '') -> str:
    return ('#| eval: false\n# In Colab (or any fresh environment) install the library with what this chapter needs; in a checkout use\n'
            '# `pip install -e ".[dev]"` instead. Colab already has torch, so nothing large is downloaded.\n'
            f'%pip install -q "dataalchemy{f"[{extras}]" if extras else ""} @ git+{repo_url()}"')

def _cell(kind: str, cid: str, src: str) -> dict:
    c = {'cell_type': kind, 'id': cid, 'metadata': {}, 'source': src.splitlines(keepends=True)}
    if kind == 'code': c |= {'execution_count': None, 'outputs': []}
    return c

def fix(path: Path, write: bool = True) -> list[str]:
    "Insert the missing cells into one notebook; returns what was (or would be) added."
    nb = json.loads(path.read_text(encoding='utf-8'))
    cells, stem, added = nb['cells'], re.sub(r'[^A-Za-z0-9]', '', path.stem)[:12], []
    if not any(COLAB in ''.join(c['source']) for c in cells):
        cells.insert(1, _cell('markdown', f'colab{stem}', colab_source(path.name))); added.append('colab link')
    if not any('%pip install' in ''.join(c['source']) for c in cells if c['cell_type'] == 'code'):
        cells.insert(2, _cell('code', f'install{stem}', install_source())); added.append('install cell')
    if added and write: path.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + '\n', encoding='utf-8')
    return added


if __name__ == '__main__':
    check = '--check' in sys.argv
    todo = {p.name: a for p in sorted((ROOT / 'nbs').glob('*.ipynb')) if not p.name.startswith('_')
            if (a := fix(p, write=not check))}
    for name, a in todo.items(): print(f"{name}: {'missing' if check else 'added'} {', '.join(a)}")
    sys.exit(1 if check and todo else 0)
