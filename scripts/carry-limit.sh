# carry-limit.sh - sourced by scripts/device-run (pack) and scripts/split-model: whether a
# device call's carry fits beside the tracked tree.
#
# A call carries at most 64 MiB together with the tracked tree. The device refused 65.5 MB
# (tree 37.2 + carry 28.3) on 2026-11-30 and 65.1 MB (tree 45.1 + a 19 MiB model part) on
# 2026-12-05, and took 63.0 MB, so the check counts decimal megabytes up to 63.
#
#   carry_check WHAT BYTES ADVICE   # a line on stderr when the tree and BYTES are over

carry_check() {
    local what=$1 bytes=$2 advice=$3 tree
    tree=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && git ls-files -z | du -cb --files0-from=- 2>/dev/null |
        tail -n 1 | cut -f1)
    if ((tree + bytes > 63 * 1000 * 1000)); then
        echo "$(basename "$0"): the tracked tree ($((tree / 1000000)) MB) and $what ($((bytes / 1000000)) MB)" \
            "are over what a call carries (64 MiB, refused at 65.1 MB): $advice" >&2
    fi
}
