"""PII scrubbing speed: the old per-record path vs the pre-screened, batched path, on the same records in the same run.

    python bench/pii.py [--corpus ../shared/corpora/t0_train_50k.jsonl.gz] [--limit 10000] [--cli]

1. old: what `pii` did before: presidio's `AnalyzerEngine.analyze` on every text of every record, one text at a time
   (the same recognizers, look-alike rules and placeholders as now: only the way texts reach presidio differs);
2. new: `scrub_records` (batches of 256 records, a regular-expression pre-screen so presidio sees only texts that can
   hold a presidio finding, `BatchAnalyzerEngine` for those).
A probe set of planted PII (Chinese and English, every entity type) is mixed into the records first. The script
checks that both paths give identical findings (entity and span) for every text, prints records/s of each and the
ratio, and with --cli times `dataalchemy filter` and `dataalchemy pii` on the same file as whole commands (the goal:
`pii` within 4x of `filter`).
"""
from __future__ import annotations
import argparse, copy, gzip, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / 'shared' / 'corpora' / 't0_train_50k.jsonl.gz'

PROBES = ['请联系李明，手机号 13987654321，身份证号 11010519491231002X。', 'Contact Jane Miller at jane.miller@example.com or call +1 415 555 0134.',
          '课程助教是王老师，邮箱是 wang.teacher@example.org，电话是 010-62345678。', 'Card 4111 1111 1111 1111, server 192.168.1.20.',
          '寄到北京市海淀区中关村大街27号1号楼302室', 'my SSN is 078-05-1120 and IBAN GB82 WEST 1234 5698 7654 32',
          '护照号码 E12345678，银行卡 6222 0212 3456 7891', 'Dr. Smith said: see https://example.org/a?b=1']


def load(path, limit):
    out = []
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        for line in f:
            r = json.loads(line)
            out.append({'id': r['id'], 'prompt': r['prompt'], 'completion': r['completion']})
            if len(out) >= limit: break
    for i, p in enumerate(PROBES * 5):               # planted: every 97th record carries one probe
        out[(i * 97) % len(out)]['completion'] += ' ' + p
    return out


def old_path(sc, recs):
    "presidio on every text, one at a time (the path before the pre-screen), same post-processing."
    from dataalchemy.core import record_texts
    from dataalchemy.pii import OWN_FINDERS
    found = []
    for r in recs:
        for _, c, k in record_texts(r):
            t = c[k]
            res = sc.analyzer.analyze(text=t, language='en', entities=sc.entities, score_threshold=sc.opts.score_threshold)
            own = [(e, s, x, v) for e, f in OWN_FINDERS.items() for s, x, v in f(t) if v >= sc.opts.score_threshold]
            fs = sc._keep(t, [(x.entity_type, x.start, x.end, x.score) for x in res] + own)
            found.append([(f.entity, f.start, f.end) for f in fs])
            if fs: c[k] = sc.apply(t, fs)
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--corpus', default=str(DEFAULT))
    ap.add_argument('--limit', type=int, default=10_000)
    ap.add_argument('--cli', action='store_true', help='also time `dataalchemy filter` and `dataalchemy pii` on the file')
    a = ap.parse_args()
    if not Path(a.corpus).exists(): sys.exit(f'error: {a.corpus}: no such file (see ../shared/corpora/README.md)')
    from dataalchemy.core import record_texts
    from dataalchemy.pii import PIIScrubber, scrub_records
    recs = load(a.corpus, a.limit)
    sc = PIIScrubber('replace', fields='auto')
    sc.analyze('warm up 13812345678 a@b.org')
    r_old = copy.deepcopy(recs)
    t = time.perf_counter(); old = old_path(sc, r_old); t_old = time.perf_counter() - t
    r_new = copy.deepcopy(recs)
    t = time.perf_counter(); out = list(scrub_records(r_new, sc)); t_new = time.perf_counter() - t
    new = [[(f['entity'], f['start'], f['end']) for f in (r.get('meta') or {}).get('pii', []) if f['field'] == p]
           for r in out for p, _, _ in record_texts(r)]
    # per text findings of the new path come from meta.pii (grouped by field path, in record order)
    same = old == new and [json.dumps(r, sort_keys=True) for r in r_old] == [json.dumps({k: v for k, v in r.items() if k != 'meta'}, sort_keys=True) for r in out]
    n_found = sum(map(len, old))
    print(f'records: {len(recs):,} ({2 * len(recs):,} texts); findings: {n_found:,}; identical findings and outputs: {same}')
    print(f'old (presidio on every text, one by one): {len(recs) / t_old:9,.0f} rec/s  ({t_old:.1f} s)')
    print(f'new (pre-screen + batches)              : {len(recs) / t_new:9,.0f} rec/s  ({t_new:.1f} s)')
    print(f'speed-up new / old: {t_old / t_new:.1f}x')
    if a.cli:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / 'in.jsonl'
            src.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in recs), encoding='utf-8')
            def run(*args):
                t = time.perf_counter()
                subprocess.run([str(Path(sys.executable).parent / 'dataalchemy'), *args], check=True, capture_output=True,
                               env={**os.environ, 'DATAALCHEMY_PII_SECRET': 'bench'})
                return time.perf_counter() - t
            tf = run('filter', str(src), str(Path(d) / 'f.jsonl'), '--preset', 'sft-default')
            tp = run('pii', str(src), str(Path(d) / 'p.jsonl'))
            print(f'CLI on the same file: filter {tf:.1f} s, pii {tp:.1f} s: pii / filter = {tp / tf:.2f}x (goal: <= 4x)')
    if not same: sys.exit(1)


if __name__ == '__main__':
    main()
