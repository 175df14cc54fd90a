"""Filter throughput: the course's QualityFilter rules vs dataalchemy's `sft-default` preset, and PII scrubbing.

    python bench/filters.py [--corpus ../shared/corpora/t0_train_50k.jsonl.gz] [--limit N] [--pii-sample 2000]

Same records, same run, one process:
  1. course: a faithful re-implementation of the course's QualityFilter.filter_sample with toxicity and PII off
     (whitespace word count 10..2000, a line repeated more than 3 times, "..." / "[未完成]" / "to be continued"
     anywhere, three refusal phrases anywhere);
  2. sft-default: dataalchemy.filters.FilterPipeline(preset_filters('sft-default')): CJK-aware lengths, placeholders,
     refusals, incomplete outputs, repeated lines and Gopher repetition;
  3. PII: dataalchemy.pii.PIIScrubber('replace') over prompt and completion of the first --pii-sample records.
Prints records/s of each, the ratio sft-default / course, and both pass rates (they differ: the course drops every
output containing "..." and every output under 10 whitespace words, which on this corpus is most short answers).
"""
from __future__ import annotations
import argparse, sys, time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / 'shared' / 'corpora' / 't0_train_50k.jsonl.gz'


class CourseQualityFilter:
    "The course's QualityFilter rules (toxicity and PII disabled), as written there."
    def check_length(self, sample):
        output_words = len(sample['output'].split())
        return 10 <= output_words <= 2000

    def check_repetition(self, text):
        lines = text.split('\n')
        line_counts = {}
        for line in lines:
            line = line.strip()
            if line:
                line_counts[line] = line_counts.get(line, 0) + 1
                if line_counts[line] > 3: return False
        return True

    def check_completeness(self, output):
        incomplete_patterns = ["...", "[未完成]", "to be continued"]
        output_lower = output.lower()
        for pattern in incomplete_patterns:
            if pattern in output_lower: return False
        return True

    def check_refusal(self, output):
        refusal_patterns = ["i cannot", "i'm unable to", "as an ai"]
        output_lower = output.lower()
        for pattern in refusal_patterns:
            if pattern in output_lower: return False
        return True

    def filter_sample(self, sample):
        if not self.check_length(sample): return False, "length_invalid"
        if not self.check_repetition(sample['output']): return False, "repetition_detected"
        if not self.check_completeness(sample['output']): return False, "incomplete_response"
        if not self.check_refusal(sample['output']): return False, "refusal_detected"
        return True, "passed"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--corpus', default=str(DEFAULT))
    ap.add_argument('--limit', type=int, default=0)
    ap.add_argument('--pii-sample', type=int, default=2000)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from dataalchemy.core import read_records, Stats
    from dataalchemy.filters import FilterPipeline, preset_filters
    if not Path(a.corpus).exists(): sys.exit(f'{a.corpus}: not found (the corpora live in ../shared/corpora)')
    recs = []
    for r in read_records(a.corpus):
        recs.append({'instruction': r['prompt'], 'input': '', 'output': r['completion']})
        if a.limit and len(recs) >= a.limit: break
    print(f'{len(recs):,} records from {a.corpus}')

    course = CourseQualityFilter()
    t = time.perf_counter(); c = Counter(course.filter_sample(r)[1] for r in recs); tc = time.perf_counter() - t
    p = FilterPipeline(preset_filters('sft-default'))
    st = Stats('sft-default')
    t = time.perf_counter(); n_kept = sum(1 for _ in p(({**r} for r in recs), st)); ts = time.perf_counter() - t
    print(f'course QualityFilter : {len(recs) / tc:10,.0f} rec/s   pass {c["passed"] / len(recs):6.1%}   {dict(c.most_common(4))}')
    print(f'sft-default          : {len(recs) / ts:10,.0f} rec/s   pass {n_kept / len(recs):6.1%}   {dict(st.reasons.most_common(4))}')
    print(f'ratio sft-default / course: {tc / ts:.2f}x (sft-default does more checks: Gopher n-grams, CJK tokens)')

    if a.pii_sample:
        from dataalchemy.pii import PIIScrubber
        sc = PIIScrubber('replace', fields=['instruction', 'output'])
        sc.scrub_text('warm up a@b.com')                      # build the analyzer outside the timing
        sample = [{**r} for r in recs[:a.pii_sample]]
        t = time.perf_counter()
        for r in sample: sc(r)
        tp = time.perf_counter() - t
        print(f'PII replace          : {len(sample) / tp:10,.0f} rec/s   on {len(sample):,} records; found {dict(sc.counts.most_common(5))}')


if __name__ == '__main__':
    main()
