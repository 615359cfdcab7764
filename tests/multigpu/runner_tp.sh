#!/usr/bin/env bash
# runner_tp.sh RUNNER MODEL [TP] [OUTDIR] - hashattn-run --tp TP against --tp 1 on
# SmolLM2: the same greedy tokens for every prompt of tests/runner/prompts.txt
# (continuous batching: prefill chunks and decode steps), in dense mode and in
# hash mode with a small budget (sink 16, recent 16, heavy 8) so that the
# sparse path runs at these lengths. Exit 77 ("skipped: ...") with fewer than
# TP GPUs or no model; last line "runner_tp: ... OK" or "... FAILED".
set -uo pipefail
RUN=$1 MODEL=$2 TP=${3:-3} OUTD=${4:-$(mktemp -d)}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROMPTS=$HERE/../runner/prompts.txt
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
[[ $gpus -ge $TP ]] || { echo "runner_tp: skipped: needs $TP GPUs ($gpus here)"; exit 77; }
[[ -f "$MODEL" ]] || { echo "runner_tp: skipped: no model at $MODEL"; exit 77; }
mkdir -p "$OUTD"
fail=0
for mode in dense hash; do
    extra=()
    [[ $mode == hash ]] && extra=(--attn hash --sink 16 --recent 16 --heavy-count 8)
    for t in 1 "$TP"; do
        if ! timeout "${RUN_TIMEOUT:-120}" "$RUN" --model "$MODEL" --device cuda --tp "$t" --prompts "$PROMPTS" --batch 4 \
            --max-new-tokens 32 --temperature 0 "${extra[@]}" --jsonl "$OUTD/$mode-tp$t.jsonl" \
            >"$OUTD/$mode-tp$t.log" 2>&1; then
            echo "runner_tp: $mode --tp $t failed:"; tail -5 "$OUTD/$mode-tp$t.log"; fail=1
        fi
    done
    if [[ -s "$OUTD/$mode-tp1.jsonl" ]] && cmp -s <(sort "$OUTD/$mode-tp1.jsonl") <(sort "$OUTD/$mode-tp$TP.jsonl"); then
        echo "runner_tp: $mode: --tp $TP gives the same tokens as --tp 1 ($(wc -l <"$OUTD/$mode-tp1.jsonl") prompts)"
    else
        echo "runner_tp: $mode: --tp $TP and --tp 1 differ:"
        diff <(sort "$OUTD/$mode-tp1.jsonl") <(sort "$OUTD/$mode-tp$TP.jsonl") | head -6
        fail=1
    fi
done
if [[ $fail -eq 0 ]]; then echo "runner_tp: tp $TP: OK"; else echo "runner_tp: tp $TP: FAILED"; fi
exit $fail
