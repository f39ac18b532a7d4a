#!/usr/bin/env bash
# Party B (the Transformer backbone, under DeepSpeed ZeRO-2) of the Pangu-alpha split, the seed's arguments:
#   bash run_pangu_train_follower.sh LOCAL_ADDR PEER_ADDR [ENABLE_SSL SERVER_PW CLIENT_PW SERVER_CERT CLIENT_CERT CA_CERT] [options]
# The model options (--config, --no-deepspeed, --compress) must match party A's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
case "${1:-}" in -h|--help) exec "$python" "$here/run_pangu_train.py" follower --help;; esac
exec "$python" "$here/run_pangu_train.py" follower "$@"
