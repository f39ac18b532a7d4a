#!/usr/bin/env bash
# Party A and party B of the Pangu-alpha split in one process (the seed's run_pangu_train_local.sh).
#   bash run_pangu_train_local.sh [TRAIN_DATA] [options]     (default data: ./data/train, made from the stdlib if absent)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
case "${1:-}" in -h|--help) exec "$python" "$here/run_pangu_train.py" local --help;; esac
data="${1:-./data/train}"; [ $# -gt 0 ] && shift
[ -f "$data/tokens.npy" ] || "$python" "$here/preprocess.py" --stdlib --out "$data"
"$python" "$here/run_pangu_train.py" local "$data" --metrics splitnn_pangu_local.jsonl "$@" 2>&1 | tee splitnn_pangu_local.txt
