"""The ``splitlink`` command (also ``python -m splitlink``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _certs(args: argparse.Namespace) -> int:
    from splitlink.certs import make_dev_certs

    files = make_dev_certs(args.out, args.parties, password=args.password, hosts=args.hosts, days=args.days)
    print(f"wrote a development CA and credentials for {', '.join(files)} under {args.out}/")
    for f in files.values():
        print(f"  {f.name}: server {f.server_cert.name} / {f.server_key.name} ({f.server_p12.name}), "
              f"client {f.client_cert.name} / {f.client_key.name} ({f.client_p12.name})")
    print(f"  CA certificate: ca.crt (give it to every party); .p12 password: {args.password!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitlink", description="Split learning across organisations over mutual TLS.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    certs = sub.add_parser("certs", help="create development certificates for mutual TLS",
                           description="Creates a development CA and, per party, server and client certificates "
                                       "(PEM and password-protected PKCS#12) with the party name in the subject "
                                       "alternative names.")
    certs.add_argument("--out", default="certs", help="output folder (default: certs)")
    certs.add_argument("--parties", nargs="+", default=["leader", "follower"], help="party names (default: leader follower)")
    certs.add_argument("--password", default="splitlink", help="password of the .p12 bundles (default: splitlink)")
    certs.add_argument("--hosts", nargs="+", default=["localhost", "127.0.0.1", "::1"],
                       help="host names and IP addresses servers are reached at (default: localhost 127.0.0.1 ::1)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    certs.set_defaults(func=_certs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as e:
        print(f"splitlink {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
