#!/usr/bin/env bash
# Party B (the Transformer backbone, under DeepSpeed) over NPROC ranks on this machine, started by torchrun,
# party A scattering every global batch to them (run party A with the same --ranks scatter:NPROC):
#   NPROC=2 bash run_pangu_train_follower_ranks.sh LOCAL_ADDR PEER_ADDR [ENABLE_SSL SERVER_PW CLIENT_PW SERVER_CERT CLIENT_CERT CA_CERT] [options]
# Rank r listens on LOCAL_ADDR's port + r and is called follower-r<r> on the channel: its certificates
# must name it; write {rank} in the certificate paths (certs/follower-r{rank}.server.p12).
# Several machines: run torchrun yourself with --nnodes/--node_rank/--rdzv-endpoint and give
# --follower-addresses with every rank's host:port (see the README).
# MAX_RESTARTS (default 3): torchrun restarts the whole group when a rank dies; it resumes from the
# newest checkpoint every rank and party A hold (give --ckpt-every and --resume).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
nproc="${NPROC:-2}"
case "${1:-}" in -h|--help)
  echo "usage: NPROC=2 bash $(basename "$0") LOCAL_ADDR PEER_ADDR [ssl args] [options]  (party B over NPROC ranks)"
  exec "$python" "$here/run_pangu_train.py" follower --help;;
esac
has_ranks=0
for arg in "$@"; do case "$arg" in --ranks|--ranks=*) has_ranks=1;; esac; done
extra=()
[ "$has_ranks" = 1 ] || extra=(--ranks "scatter:$nproc")
exec "$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" --max-restarts "${MAX_RESTARTS:-3}" \
  "$here/run_pangu_train.py" follower "$@" "${extra[@]}"
