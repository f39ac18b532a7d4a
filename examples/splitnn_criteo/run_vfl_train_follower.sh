#!/usr/bin/env bash
# The follower of the Wide&Deep split (the seed's arguments, in the seed's order):
#   bash run_vfl_train_follower.sh LOCAL_ADDR PEER_ADDR DATA_PATH [ENABLE_SSL SERVER_PW CLIENT_PW SERVER_CERT CLIENT_CERT CA_CERT] [options]
# e.g.
#   bash run_vfl_train_follower.sh 127.0.0.1:10086 127.0.0.1:10087 ./data/preprocessed True \
#        splitlink splitlink certs/follower.server.p12 certs/follower.client.p12 certs/ca.crt --epochs 2
# --help lists the options (--resume, --label-dp, --no-compress, --ckpt-every, ...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
exec "$python" "$here/run_vfl_train.py" follower "$@"
