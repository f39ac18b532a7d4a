#!/usr/bin/env bash
# Party A (Embedding + Head, holds the text) of the Pangu-alpha split, the seed's arguments in the seed's order:
#   bash run_pangu_train_leader.sh LOCAL_ADDR PEER_ADDR TRAIN_DATA EVAL_DATA [ENABLE_SSL SERVER_PW CLIENT_PW SERVER_CERT CLIENT_CERT CA_CERT] [options]
# e.g. bash run_pangu_train_leader.sh 127.0.0.1:10087 127.0.0.1:10086 ./data/train ./data/train_eval True \
#        splitlink splitlink certs/leader.server.p12 certs/leader.client.p12 certs/ca.crt --max-steps 200
# --help lists the options (--config tiny|350M|2.6B, --compress, --embedding-dp, --resume, ...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
case "${1:-}" in -h|--help) exec "$python" "$here/run_pangu_train.py" leader --help;; esac
exec "$python" "$here/run_pangu_train.py" leader "$@"
