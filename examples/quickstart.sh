#!/usr/bin/env bash
# The main job of the quick start (until `dataalchemy build` lands): take the example datasets in every format,
# validate them, convert between formats, and describe the results. Runs offline, in under a minute.
# Usage: bash examples/quickstart.sh [OUT_DIR]     (default: out/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
mkdir -p "$out"

echo "== 1. validate the examples (examples/bad.jsonl is broken on purpose: every problem names its line)"
for f in examples/alpaca_en.jsonl examples/alpaca_zh.json examples/sharegpt_multiturn.jsonl \
         examples/messages.jsonl examples/prompt_completion.jsonl; do
  dataalchemy validate "$f"
done
if dataalchemy validate examples/bad.jsonl; then echo "bad.jsonl should have failed validation" >&2; exit 1; fi

echo
echo "== 2. convert between formats (records a format cannot hold go to an errors file, with the reason)"
convert() {  # IN FORMAT
  local name; name=$(basename "$1"); name=${name%%.*}
  dataalchemy convert "$1" "$out/$name.$2.jsonl" --to "$2" --lenient --errors "$out/$name.$2.errors.jsonl"
}
convert examples/sharegpt_multiturn.jsonl alpaca          # multi-turn: earlier turns become `history`
convert examples/alpaca_zh.json messages                  # Alpaca (a JSON array) -> OpenAI chat messages
convert examples/alpaca_en.jsonl sharegpt
convert examples/messages.jsonl prompt-completion         # TRL's prompt/completion

echo
echo "== 3. the converted files validate, and what they contain"
for f in "$out"/*.jsonl; do
  case "$f" in *.errors.jsonl) continue ;; esac
  dataalchemy validate "$f" > /dev/null
done
dataalchemy stats "$out/sharegpt_multiturn.alpaca.jsonl"
dataalchemy stats "$out/alpaca_zh.messages.jsonl"
echo
echo "Done: $(ls "$out"/*.jsonl | grep -vc errors) converted files in $out/"
