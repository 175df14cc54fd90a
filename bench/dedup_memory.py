"""Peak memory of `dataalchemy dedup` on generated sets, per million records.

    python bench/dedup_memory.py [--sets near220k,distinct1m] [--scale 1.0] [--workers 2] [--modes verify,no-verify]

Two generated sets (written to a temporary folder, gzipped JSONL; nothing is shipped):

- `near220k`: 110k random instructions of 4 to 60 words (10% of them Chinese, 4 to 60 characters), each followed by a
  variant with one token changed: the short-text case where every record has a near-duplicate.
- `distinct1m`: 1M records (instruction of 5 to 29 words + output of 20 to 149 words); 30% of them are variants of an
  earlier record with 1 to 3 tokens changed, the rest are distinct.

Each job runs `dataalchemy dedup IN OUT --fields ...` in a fresh process (`--workers`, default 2). Printed: seconds;
the driver's peak resident set (`VmHWM`, read every 50 ms until it exits: the process that holds the per-record state
and the index) and that peak per million records above the start-up peak (a 10-record job); the largest sum of the
resident sets of the driver and its worker processes (sampled; each worker holds one chunk's arrays, whatever the
input size); records kept. `--scale 0.1` makes the sets ten times smaller (a quick
check). The jobs run in the temporary folder, so `PYTHONPATH=OTHER_CHECKOUT python bench/dedup_memory.py` measures
another version of the package (e.g. a worktree of an earlier commit).
"""
from __future__ import annotations
import argparse, gzip, json, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

VOCAB = None


def vocab(rng) -> np.ndarray:
    "20,000 pseudo-words of 2 to 9 letters."
    global VOCAB
    if VOCAB is None:
        letters = np.array(list('abcdefghijklmnopqrstuvwxyz'))
        VOCAB = np.array([''.join(rng.choice(letters, rng.integers(2, 10))) for _ in range(20000)])
    return VOCAB


def words(rng, n: int, zh: bool = False) -> list[str]:
    if zh: return [chr(c) for c in rng.integers(0x4E00, 0x9FA5, n)]
    return vocab(rng)[rng.integers(0, 20000, n)].tolist()


def join(ws: list[str], zh: bool) -> str: return ''.join(ws) if zh else ' '.join(ws)


def change(rng, ws: list[str], k: int, zh: bool) -> list[str]:
    "A copy of `ws` with `k` tokens replaced."
    ws = list(ws)
    for j in rng.integers(0, len(ws), k): ws[j] = words(rng, 1, zh)[0]
    return ws


def near220k(path: Path, n_pairs: int, rng) -> tuple[int, str]:
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        for i in range(n_pairs):
            zh = rng.random() < 0.1
            ws = words(rng, int(rng.integers(4, 61)), zh)
            for j, w in enumerate((ws, change(rng, ws, 1, zh))):
                f.write(json.dumps({'id': 2 * i + j, 'instruction': join(w, zh)}, ensure_ascii=False) + '\n')
    return 2 * n_pairs, 'instruction'


def distinct1m(path: Path, n: int, rng) -> tuple[int, str]:
    recent: list[tuple[list[str], list[str]]] = []
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        for i in range(n):
            if recent and rng.random() < 0.3:
                q, a = recent[int(rng.integers(0, len(recent)))]
                k = int(rng.integers(1, 4))
                q, a = (change(rng, q, k, False), a) if rng.random() < 0.5 else (q, change(rng, a, k, False))
            else:
                q, a = words(rng, int(rng.integers(5, 30))), words(rng, int(rng.integers(20, 150)))
                if len(recent) < 5000: recent.append((q, a))
                else: recent[int(rng.integers(0, 5000))] = (q, a)
            f.write(json.dumps({'id': i, 'instruction': ' '.join(q), 'output': ' '.join(a)}) + '\n')
    return n, 'instruction,output'


def _status(pid: int, key: str) -> int:
    "A `/proc/PID/status` field in bytes (0 once the process is gone)."
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    except OSError: pass
    return 0


def _children(pid: int) -> list[int]:
    try: return [int(c) for c in open(f'/proc/{pid}/task/{pid}/children').read().split()]
    except OSError: return []


def run(args: list[str], cwd: Path) -> tuple[float, int, int, int, str]:
    """Run `dataalchemy` in a fresh process: (seconds, the driver's peak RSS (VmHWM, sampled until it exits), the
    largest sum of RSS over the driver and its workers (sampled every 50 ms), exit status, output)."""
    t = time.perf_counter()
    out = tempfile.TemporaryFile()
    p = subprocess.Popen([sys.executable, '-c', 'from dataalchemy.cli import main; main()', *args], stdout=out, stderr=subprocess.STDOUT,
                         cwd=cwd)   # not the checkout: `python -c` would import the package from the current folder
    hwm = total = 0
    while p.poll() is None:
        hwm = max(hwm, _status(p.pid, 'VmHWM'))
        total = max(total, _status(p.pid, 'VmRSS') + sum(_status(c, 'VmRSS') for c in _children(p.pid)))
        time.sleep(0.05)
    out.seek(0)
    return time.perf_counter() - t, hwm, total, p.returncode, out.read().decode(errors='replace')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sets', default='near220k,distinct1m')
    ap.add_argument('--scale', type=float, default=1.0, help='size factor of the generated sets')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--modes', default='verify,no-verify', help='comma-separated: verify, no-verify, strict')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix='dataalchemy_dedup_mem_'))
    makers = {'near220k': (near220k, 110_000), 'distinct1m': (distinct1m, 1_000_000)}
    try:
        tiny = tmp / 'tiny.jsonl'
        tiny.write_text(''.join(json.dumps({'id': i, 'instruction': f'record {i}', 'output': 'x'}) + '\n' for i in range(10)))
        base = run(['dedup', str(tiny), str(tmp / 'tiny.out.jsonl'), '--workers', str(a.workers)], tmp)[1]
        print(f'start-up peak of the driver (10 records): {base / 2**20:.0f} MiB; "per million" below counts the peak above it', flush=True)
        for name in a.sets.split(','):
            make, size = makers[name]
            src = tmp / f'{name}.jsonl.gz'
            t = time.perf_counter()
            n, fields = make(src, max(1, int(size * a.scale)), np.random.default_rng(a.seed))
            print(f'{name}: {n:,} records generated in {time.perf_counter() - t:.0f} s', flush=True)
            for mode in a.modes.split(','):
                flag = {'verify': ['--verify'], 'no-verify': ['--no-verify'], 'strict': ['--verify', '--strict-clusters']}[mode]
                out = tmp / f'{name}.{mode}.jsonl'
                secs, rss, total, rc, text = run(['dedup', str(src), str(out), '--fields', fields, '--workers', str(a.workers), *flag], tmp)
                if rc: print(text[-2000:])
                kept = sum(1 for _ in open(out, encoding='utf-8')) if out.exists() else 0
                print(f'  {mode:9}: {secs:6.0f} s  driver peak {rss / 2**20:6.0f} MiB ({(rss - base) / 2**20 / (n / 1e6):5.0f} MiB per million '
                      f'above start-up)  driver + workers {total / 2**20:6.0f} MiB  kept {kept:,} of {n:,}  rc {rc}', flush=True)
                out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
