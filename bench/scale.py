"""How `dataalchemy build` grows with its input: time and peak memory (offline) at several sizes, and the cost order.

    python bench/scale.py [--sizes 2000,10000,50000] [--corpus ../shared/corpora/t0_train_50k.jsonl.gz] [--order]

For each size N, the first N T0 records (prompt + completion, real English text with many natural repeats: the same
passage appears under several prompt templates) are written as N/50 plain-text documents of 50 records each, and
`dataalchemy build` runs on them in a fresh process (offline engine, filters, safety + PII + toxicity, exact stage,
dedup, top-k; no augmentation). Printed per size: wall seconds, peak RSS of the build process (its `VmHWM`, sampled; and the same when the last stage has finished, before the audit), records
after QA and in the SFT files, and the growth ratios between consecutive sizes (time ratio / size ratio ~ 1 means
linear time; a memory ratio near 1 means memory does not grow with the input).

With --order the same build also runs with `[dedup] early_exact = false` (exact copies removed only by the dedup stage,
after PII and toxicity): the SFT files must be byte-identical and the PII stage's time is printed for both.
With --engine ray the build's per-record stages run as Ray tasks over shards (Ray local mode; the peak is the build
process's, not its Ray workers').

Past the corpus's end (55,185 T0 records) the records are variants: each pass over the corpus swaps every 4th word for
a word of another record, so the texts stay distinct (no shared word 5-gram with their source) and sized like T0.
"""
from __future__ import annotations
import argparse, gzip, itertools, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / 'shared' / 'corpora' / 't0_train_50k.jsonl.gz'

CONFIG = """[build]
documents = ["{docs}"]
out = "{out}"
formats = ["alpaca", "sharegpt", "messages", "prompt-completion"]
report = "none"
audit = "{audit}"
engine = "{engine}"
shard_size = {shard_size}
[qa]
chunk_by = "sentences"
chunk_size = 80
chunk_overlap = 20
pairs_per_chunk = 3
[toxicity]
backend = "offline"
[dedup]
workers = 1
early_exact = {early}
[augment]
enabled = false
[topk]
k = 3
"""


def variant(text: str, p: int, donor: str) -> str:
    "Pass `p` > 0 over the corpus: every 4th word (from word `p % 4`) swapped for a word of another record, `donor`."
    words, other = text.split(' '), donor.split() or ['x']
    for j in range(p % 4, len(words), 4): words[j] = other[(j + p) % len(other)]
    return ' '.join(words)


def corpus_records(corpus: Path):
    "The corpus's texts, then (past its end) passes of word-swapped variants: distinct texts that are not near-copies."
    with gzip.open(corpus, 'rt', encoding='utf-8') as f:
        texts = [f"{r['prompt'].strip()}\n\n{r['completion'].strip()}\n" for r in map(json.loads, f)]
    yield from texts
    for p in itertools.count(1):
        for i, t in enumerate(texts): yield variant(t, p, texts[(i * 7 + p) % len(texts)])


def make_docs(corpus: Path, n: int, folder: Path, per_doc: int = 50) -> int:
    "The first `n` records of `corpus` (and its variants past its end) as plain-text documents of `per_doc` records each; returns the characters written."
    folder.mkdir(parents=True)
    chars, buf, k = 0, [], 0
    for i, text in enumerate(corpus_records(corpus)):
        if i >= n: break
        buf.append(text)
        if len(buf) == per_doc:
            t = '\n'.join(buf); (folder / f'doc{k:05d}.txt').write_text(t, encoding='utf-8'); chars += len(t); buf, k = [], k + 1
    if buf: t = '\n'.join(buf); (folder / f'doc{k:05d}.txt').write_text(t, encoding='utf-8'); chars += len(t)
    return chars


def _hwm(pid: int) -> int:
    "The process's peak resident set so far (`VmHWM`, bytes), 0 once it is gone."
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    except OSError: pass
    return 0


def run_build(cfg: Path) -> tuple[float, int, int, int]:
    """Run `dataalchemy build` in a fresh process: (seconds, its peak RSS in bytes, its peak RSS when the last stage had
    finished, before the final audit (0 if not seen), exit status). Peaks are the process's `VmHWM`, read every 0.5 s."""
    env = {**os.environ, 'DATAALCHEMY_CACHE_DIR': str(cfg.parent / 'cache')}
    for k in ('DATAALCHEMY_BASE_URL', 'OPENAI_API_KEY', 'DATAALCHEMY_MODEL'): env.pop(k, None)
    t = time.perf_counter()
    log = tempfile.TemporaryFile()
    p = subprocess.Popen([sys.executable, '-c', 'from dataalchemy.cli import main; main()', 'build', str(cfg), '--quiet'], env=env,
                         stdout=log, stderr=subprocess.STDOUT, cwd=cfg.parent)
    stages_peak, hwm = 0, 0
    while p.poll() is None:
        hwm = max(hwm, _hwm(p.pid))
        if not stages_peak and list((cfg.parent / 'out' / 'stages').glob('*_topk/done.json')): stages_peak = hwm
        time.sleep(0.5)
    secs, rc = time.perf_counter() - t, p.returncode
    if rc not in (0, 1): log.seek(0); sys.stderr.write(log.read().decode(errors='replace')[-3000:])
    return secs, hwm, stages_peak, rc


def stage(out: Path, name: str) -> dict:
    st = json.loads((out / 'stats.json').read_text())
    return next((s for s in st['stages'] if s['stage'] == name), {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--corpus', default=str(DEFAULT))
    ap.add_argument('--sizes', default='2000,10000,50000', help='comma-separated record counts')
    ap.add_argument('--order', action='store_true', help='also run without the early exact stage and compare')
    ap.add_argument('--engine', default='local', choices=['local', 'ray'], help="build's [build] engine (ray: Ray local mode)")
    ap.add_argument('--shard-size', type=int, default=50000, help="build's [build] shard_size (records per Ray task)")
    ap.add_argument('--audit', default='fail', choices=['fail', 'warn', 'off'], help="build's [build] audit (off: the stages only)")
    ap.add_argument('--keep', action='store_true', help='keep the temporary folder')
    a = ap.parse_args()
    if not Path(a.corpus).exists(): sys.exit(f'error: {a.corpus}: no such file (see ../shared/corpora/README.md)')
    sizes = [int(s) for s in a.sizes.split(',')]
    tmp = Path(tempfile.mkdtemp(prefix='dataalchemy_scale_'))
    rows = []
    try:
        for n in sizes:
            docs = tmp / f'docs{n}'
            chars = make_docs(Path(a.corpus), n, docs)
            row = {'n': n, 'mb': chars / 1e6}
            for early in ((True, False) if a.order else (True,)):
                d = tmp / f'run{n}_{early}'; d.mkdir()
                cfg = d / 'build.toml'
                cfg.write_text(CONFIG.format(docs=docs, out=d / 'out', early=str(early).lower(), engine=a.engine, audit=a.audit, shard_size=a.shard_size), encoding='utf-8')
                secs, rss, stages_rss, rc = run_build(cfg)
                out = d / 'out'
                key = 'early' if early else 'late'
                row[key] = {'seconds': secs, 'rss': rss, 'stages_rss': stages_rss, 'rc': rc, 'qa': stage(out, 'qa').get('records_out'),
                            'pii_s': stage(out, 'pii').get('seconds'), 'pii_in': stage(out, 'pii').get('records_in'),
                            'sft': sum(1 for _ in open(out / 'sft.alpaca.jsonl', encoding='utf-8')) if (out / 'sft.alpaca.jsonl').exists() else None}
                print(f"n={n:>7,} ({row['mb']:.1f} MB text) {key:5}: {secs:7.1f} s  peak {rss / 2**20:7.0f} MiB (stages {stages_rss / 2**20:.0f})  "
                      f"QA {row[key]['qa']}  PII stage {row[key]['pii_in']} records {row[key]['pii_s']} s  SFT {row[key]['sft']}  rc {rc}", flush=True)
                st = json.loads((out / 'stats.json').read_text()) if (out / 'stats.json').exists() else {'stages': []}
                print('    stage seconds: ' + ', '.join(f"{s['stage']} {s.get('seconds', 0):.0f}" for s in st['stages']), flush=True)
            if a.order:
                same = all((tmp / f'run{n}_True' / 'out' / f).read_bytes() == (tmp / f'run{n}_False' / 'out' / f).read_bytes()
                           for f in ('sft.alpaca.jsonl', 'sft.sharegpt.jsonl', 'sft.messages.jsonl', 'sft.prompt-completion.jsonl', 'topk.jsonl'))
                e, l = row['early'], row['late']
                print(f"    order: identical deliverables {same}; PII stage {l['pii_s']} s -> {e['pii_s']} s; "
                      f"build {l['seconds']:.1f} s -> {e['seconds']:.1f} s ({l['seconds'] / e['seconds']:.2f}x)")
            rows.append(row)
        print('\ngrowth between consecutive sizes (ratio of records, of time, of peak memory):')
        for a0, a1 in zip(rows, rows[1:]):
            e0, e1 = a0['early'], a1['early']
            print(f"  {a0['n']:>7,} -> {a1['n']:>7,}: records x{a1['n'] / a0['n']:.1f}  time x{e1['seconds'] / e0['seconds']:.2f}  "
                  f"memory x{e1['rss'] / e0['rss']:.2f} (stages x{e1['stages_rss'] / max(e0['stages_rss'], 1):.2f})")
    finally:
        if a.keep: print('kept', tmp)
        else: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
