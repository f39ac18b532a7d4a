"""The ``splitlink`` command (also ``python -m splitlink``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from splitlink.errors import SplitlinkError

DEMO_SCENARIO = "criteo_wide_deep"  # `splitlink demo` runs this scenario's demo


def _certs(args: argparse.Namespace) -> int:
    from splitlink.certs import make_dev_certs

    files = make_dev_certs(args.out, args.parties, password=args.password, hosts=args.hosts, days=args.days)
    print(f"wrote a development CA and credentials for {', '.join(files)} under {args.out}/")
    for f in files.values():
        print(
            f"  {f.name}: server {f.server_cert.name} / {f.server_key.name} ({f.server_p12.name}), "
            f"client {f.client_cert.name} / {f.client_key.name} ({f.client_p12.name})"
        )
    print(f"  CA certificate: ca.crt (give it to every party); .p12 password: {args.password!r}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from splitlink.runtime.launch import run_party
    from splitlink.runtime.run_config import load_run_config

    cfg = load_run_config(args.config)
    if cfg.party != args.party:
        raise ValueError(f"{args.config} is the run file of the {cfg.party}, not the {args.party}")
    code = run_party(cfg)
    # Flush, then leave without interpreter teardown: torch/gloo can abort at exit after a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _demo(args: argparse.Namespace) -> int:
    from splitlink.runtime import registry

    demo = registry.get(DEMO_SCENARIO).demo
    assert demo is not None, f"the {DEMO_SCENARIO} scenario has no demo"
    demo(args.workdir, rows=args.rows, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    return 0


def _psi(args: argparse.Namespace) -> int:
    import logging

    from splitlink.channel import ServerConfig, SSLConfig, VerticalFederatedCommunicator
    from splitlink.psi import join_csv

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    peer = "follower" if args.role == "leader" else "leader"
    ssl = None
    if not args.insecure:
        missing = [f"--{n.replace('_', '-')}" for n in ("server_cert", "client_cert", "ca_cert") if not getattr(args, n)]
        if missing:
            raise ValueError(f"mutual TLS needs {', '.join(missing)} (or --insecure on loopback addresses)")
        ssl = SSLConfig(
            server_cert_path=args.server_cert,
            client_cert_path=args.client_cert,
            ca_cert_path=args.ca_cert,
            server_password=args.server_password,
            client_password=args.client_password,
        )
    with VerticalFederatedCommunicator(
        ServerConfig(args.role, args.address), ServerConfig(peer, args.peer_address), enable_ssl=not args.insecure, ssl_config=ssl
    ) as comm:
        n = join_csv(
            args.input,
            args.key,
            args.output,
            comm,
            peer,
            role=args.role,
            buckets=args.buckets,
            state_dir=args.state_dir,
            threads=args.threads,
        )
    print(f"splitlink psi: {n} rows in the intersection written to {args.output}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import json
    import math
    import tempfile
    from pathlib import Path

    from splitlink.attacks import audit
    from splitlink.runtime import registry

    registry.get(args.scenario)  # imports the scenario, which registers its audit target (if it has one)
    target = audit.get_target(args.scenario)
    for name in ("rows", "epochs", "batch_size", "known", "aux"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.tsv is not None and not Path(args.tsv).is_file():
        raise ValueError(f"--tsv {args.tsv!r} is not a file (a Criteo-format TSV: label, 13 integer, 26 categorical)")
    if args.marvell_scales is not None and not all(math.isfinite(x) and x > 0 for x in args.marvell_scales):
        raise ValueError(f"--marvell-scales must be finite numbers > 0, got {args.marvell_scales}")
    defences = audit.default_defences(args.quick, marvell_scales=args.marvell_scales)
    if args.only:
        known = sorted({d.name for d in defences})
        bad = [n for n in args.only if n not in known]
        if bad:
            raise ValueError(f"--only: unknown defence(s) {', '.join(bad)}; known: {', '.join(known)}")
        defences = [d for d in defences if d.name == "none" or d.name in args.only]
    with tempfile.TemporaryDirectory(prefix="splitlink-audit-") as tmp:
        data = target.prepare(Path(args.workdir or tmp), args.rows, args.seed, args.tsv)
        show = None if args.json else (lambda text: print(text, flush=True))
        rows = audit.run_audit(
            target,
            data,
            defences=defences,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seeds=[args.seed],
            known=args.known,
            aux=args.aux,
            progress=show,
        )
    if args.plot:
        audit.plot_tradeoff(rows, args.plot, title=f"{args.scenario}: test AUC vs label leakage")
    if args.json:
        print(json.dumps({"scenario": args.scenario, "rows": rows}, indent=1))
    elif args.plot:
        print(f"trade-off plot: {args.plot}")
    return 0


def _fl(args: argparse.Namespace) -> int:
    import json

    import torch

    from splitlink.horizontal.job import load_job, run_aggregator, run_client

    cfg = load_job(args.job)
    if args.role == "aggregator":
        agg = run_aggregator(cfg)
        state, summary = agg.state, {"role": "aggregator", "rounds": agg.round, "history": agg.history}
    else:
        if not args.name:
            raise ValueError(f"splitlink fl client needs --name (one of: {', '.join(c.name for c in cfg.clients)})")
        party, result = run_client(cfg, args.name)
        state, summary = party.final, {"role": "client", "name": args.name, "rounds": party.rounds, "eval": result}
    if args.save_state:
        torch.save(state, args.save_state)
    print(json.dumps(summary, default=str))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # without interpreter teardown: torch/gloo can abort at exit after a finished run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitlink", description="Split learning across organisations over mutual TLS.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    certs = sub.add_parser(
        "certs",
        help="create development certificates for mutual TLS",
        description="Creates a development CA and, per party, server and client certificates "
        "(PEM and password-protected PKCS#12) with the party name in the subject "
        "alternative names.",
    )
    certs.add_argument("--out", default="certs", help="output folder (default: certs)")
    certs.add_argument("--parties", nargs="+", default=["leader", "follower"], help="party names (default: leader follower)")
    certs.add_argument("--password", default="splitlink", help="password of the .p12 bundles (default: splitlink)")
    certs.add_argument(
        "--hosts",
        nargs="+",
        default=["localhost", "127.0.0.1", "::1"],
        help="host names and IP addresses servers are reached at (default: localhost 127.0.0.1 ::1)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    certs.set_defaults(func=_certs)

    demo = sub.add_parser(
        "demo",
        help="run Wide&Deep split learning between two local processes over mTLS",
        description="Makes development certificates and synthetic Criteo data, trains Wide&Deep "
        "split between a leader and a follower process over mutual TLS on 127.0.0.1, "
        "prints loss and held-out AUC per epoch and writes a loss plot.",
    )
    demo.add_argument(
        "--workdir", default="splitlink-demo", help="where certificates, data, logs and the plot go (default: splitlink-demo)"
    )
    demo.add_argument("--rows", type=int, default=60_000, help="synthetic samples (default: 60000)")
    demo.add_argument("--epochs", type=int, default=3, help="epochs (default: 3)")
    demo.add_argument("--batch-size", type=int, default=500, help="batch size (default: 500)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the synthetic data (default: 1)")
    demo.set_defaults(func=_demo)

    train = sub.add_parser(
        "train",
        help="run one party of a scenario from a run file",
        description="Runs one party (leader or follower) of a scenario as described by its "
        "run file: scenario, addresses, TLS, data, model and training options. See "
        "splitlink.runtime.run_config for the format; `splitlink demo` writes two.",
    )
    train.add_argument("party", choices=["leader", "follower"], help="which party this process is")
    train.add_argument("--config", required=True, help="the party's run file (YAML)")
    train.set_defaults(func=_train)

    psi = sub.add_parser(
        "psi",
        help="join a CSV with the peer's on a key column by private set intersection",
        description="Runs ECDH private set intersection with the peer over mutual TLS and writes the "
        "rows whose key both parties hold, in the same order on both sides. Neither "
        "party learns the other's keys outside the intersection.",
    )
    psi.add_argument("--role", choices=["leader", "follower"], required=True, help="this party")
    psi.add_argument("--input", required=True, help="CSV file with a header row")
    psi.add_argument("--key", required=True, help="the column holding the sample id")
    psi.add_argument("--output", required=True, help="where the aligned rows go (CSV, same header)")
    psi.add_argument("--address", required=True, help="host:port this party listens on")
    psi.add_argument("--peer", "--peer-address", dest="peer_address", required=True, help="host:port of the peer")
    psi.add_argument("--server-cert", help="this party's server certificate (.p12, or PEM with .key beside it)")
    psi.add_argument("--client-cert", help="this party's client certificate")
    psi.add_argument("--ca-cert", help="the CA certificate both parties trust")
    psi.add_argument("--server-password", help="password of the server .p12")
    psi.add_argument("--client-password", help="password of the client .p12")
    psi.add_argument("--insecure", action="store_true", help="no TLS (loopback addresses only)")
    psi.add_argument("--buckets", type=int, default=1, help="split large inputs into this many buckets (both sides equal)")
    psi.add_argument("--state-dir", help="keep finished buckets here; a restarted run resumes after them")
    psi.add_argument("--threads", type=int, default=0, help="threads for the elliptic-curve work (default: all)")
    psi.set_defaults(func=_psi)

    aud = sub.add_parser(
        "audit",
        help="measure label and feature leakage across the cut, with each defence",
        description="Trains a scenario in one process with no defence and with each defence "
        "(Marvell gradient noise, gradient normalisation/clipping, label DP, Gaussian "
        "embedding DP) at a few strengths, runs the follower's label-inference attacks "
        "on the gradients it receives (norm, direction) and the leader's attacks on the "
        "follower's embeddings (model completion, feature inversion), and prints test "
        "AUC, attack AUCs/accuracies and step time per row.",
    )
    aud.add_argument("--scenario", default=DEMO_SCENARIO, help=f"scenario to audit (default: {DEMO_SCENARIO})")
    aud.add_argument("--quick", action="store_true", help="two strengths per defence instead of three")
    aud.add_argument("--only", nargs="+", metavar="DEFENCE", help="only these defences (and the no-defence baseline)")
    aud.add_argument("--rows", type=int, default=20_000, help="samples (default: 20000)")
    aud.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    aud.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="batch size (default: 500; Marvell's cost in test AUC falls as batches grow: audit at your training's batch)",
    )
    aud.add_argument(
        "--marvell-scales",
        nargs="+",
        type=float,
        metavar="SCALE",
        help="Marvell's power budgets to run (default: 1 4 with --quick, else 0.25 1 4 8)",
    )
    aud.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default: 0)")
    aud.add_argument("--known", type=int, default=40, help="labels the model-completion attack knows (default: 40)")
    aud.add_argument("--aux", type=int, default=200, help="auxiliary samples of the inversion attack (default: 200)")
    aud.add_argument("--tsv", help="a Criteo-format TSV to use instead of synthetic data (first --rows lines)")
    aud.add_argument("--workdir", help="where the data goes (default: a temporary folder)")
    aud.add_argument("--plot", help="write the trade-off plot (test AUC vs attack AUC) to this PNG")
    aud.add_argument("--json", action="store_true", help="print the rows as JSON")
    aud.set_defaults(func=_audit)
    fl = sub.add_parser(
        "fl",
        help="run the aggregator or a client of a horizontal FL job (FedAvg rounds)",
        description="Runs one party of a horizontal federated learning job file (see "
        "splitlink.horizontal.job): the aggregator (FATE's arbiter) or a client "
        "(FATE's guest/host), over gRPC with mutual TLS.",
    )
    fl.add_argument("role", choices=["aggregator", "client"], help="which role this process plays")
    fl.add_argument("--job", required=True, help="the federation's job file (YAML)")
    fl.add_argument("--name", help="the client's name in the job file (clients only)")
    fl.add_argument("--save-state", help="write the final global state (the exchanged tensors) here (torch.save)")
    fl.set_defaults(func=_fl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, RuntimeError, SplitlinkError) as e:
        print(f"splitlink {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
