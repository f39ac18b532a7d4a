"""Communicator throughput and latency between two processes on 127.0.0.1, TLS on and off.

For frames of 1 KiB, 1 MiB, 64 MiB and 1 GiB (one float32 tensor): throughput of
``send_tensors`` to a peer process that receives them, and the round-trip latency (p50/p99) of a
1 KiB frame sent and echoed back. The baseline runs in the same run and the same process layout,
both pairs up at once and every measurement alternating between them (so noise hits both alike):
raw grpcio with identity serializers, sending the same bytes with the same TLS setting in the best
layout raw grpcio has for each size: one unary message when the bytes fit one chunk (as the
communicator does), else a client-streaming RPC of the same chunk size; into a receiver that only
keeps the message or chunks (no assembly, no validation: an upper bound) and, for latency, echoes
with a second RPC the way the communicator does. Also the receiving process's peak memory for a
1 GiB frame.

Parallel streams: 64 MiB frames (TLS and plaintext) sent by the communicator in parallel byte ranges
(``streams`` > 1, one connection per stream, and all streams on one connection), by the
communicator with one stream (``streams=1``), and by raw grpcio with ONE client-streaming RPC (the
baseline above), all in the same run, alternating. ``--parallel-only`` runs just that comparison.
``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from queue import Queue
from typing import Any

import grpc
import torch

from splitlink import ServerConfig, SSLConfig, VerticalFederatedCommunicator
from splitlink.certs import make_dev_certs
from splitlink.util import free_ports

MiB = 1 << 20
CHUNK = 4 * MiB
SIZES = {"1KiB": 1024, "1MiB": MiB, "64MiB": 64 * MiB, "1GiB": 1024 * MiB}


def ssl_for(d: str, party: str) -> SSLConfig:
    p = Path(d)
    return SSLConfig(
        server_cert_path=str(p / f"{party}.server.crt"),
        server_key_path=str(p / f"{party}.server.key"),
        client_cert_path=str(p / f"{party}.client.crt"),
        client_key_path=str(p / f"{party}.client.key"),
        ca_cert_path=str(p / "ca.crt"),
    )


def peak_rss_kib() -> int:
    """This process's own peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    the parent's peak across fork+exec, so a child of a large parent would read the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# ---- splitlink ------------------------------------------------------------------------------


def sl_peer(cfg: dict[str, Any], ready: Any, results: Any) -> None:
    me, other = ServerConfig("receiver", cfg["recv_addr"]), ServerConfig("sender", cfg["send_addr"])
    comm = VerticalFederatedCommunicator(
        me,
        other,
        enable_ssl=cfg["tls"],
        ssl_config=cfg["tls"] and ssl_for(cfg["certs"], "receiver"),
        max_queue_bytes=4 << 30,
        **cfg.get("comm", {}),
    ).launch()
    ready.set()
    base = peak_rss_kib()
    while True:
        t = comm.receive("sender")
        if "stop" in t:
            break
        if "echo" in t:
            comm.send_tensors("sender", t)
        del t
    results.put(("maxrss_delta_kib", peak_rss_kib() - base))
    comm.shutdown()
    os._exit(0)


class SplitlinkSide:
    """The sending side of the splitlink pair (its receiver runs in a spawned process)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.results = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=sl_peer, args=(cfg, self.ready, self.results))
        self.proc.start()
        if not self.ready.wait(60):
            raise RuntimeError(f"the splitlink peer process did not start (exit code {self.proc.exitcode})")
        me, other = ServerConfig("sender", cfg["send_addr"]), ServerConfig("receiver", cfg["recv_addr"])
        self.comm = VerticalFederatedCommunicator(
            me, other, enable_ssl=cfg["tls"], ssl_config=cfg["tls"] and ssl_for(cfg["certs"], "sender"), **cfg.get("comm", {})
        ).launch()
        self.frames: dict[int, dict[str, torch.Tensor]] = {}

    def prepare(self, size: int) -> None:
        self.frames = {size: {"x": torch.ones(size // 4)}}
        self.comm.send_tensors("receiver", self.frames[size])  # warm-up (connection, buffers)

    def send(self, size: int) -> float:
        t0 = time.perf_counter()
        self.comm.send_tensors("receiver", self.frames[size])
        return time.perf_counter() - t0

    def isend(self, size: int) -> tuple[float, float]:
        """(seconds until isend returned, seconds until the frame was accepted): how long the
        caller's thread is held, against the whole send."""
        t0 = time.perf_counter()
        work = self.comm.isend("receiver", self.frames[size])
        t1 = time.perf_counter()
        work.wait()
        return t1 - t0, time.perf_counter() - t0

    def rtt(self) -> float:
        t0 = time.perf_counter()
        self.comm.send_tensors("receiver", {"echo": torch.ones(256)})
        self.comm.receive("receiver", timeout=10)
        return time.perf_counter() - t0

    def close(self) -> dict[str, Any]:
        try:
            self.comm.send_tensors("receiver", {"stop": torch.ones(1)})
            return {"receiver_maxrss_delta_gib": self.results.get(timeout=60)[1] / (1 << 20)}
        finally:
            self.comm.shutdown()
            self.proc.join(30)


# ---- raw grpcio baseline --------------------------------------------------------------------


def raw_creds(cfg: dict[str, Any], party: str, server: bool) -> Any:
    p = Path(cfg["certs"])
    key, cert, ca = (
        (p / f"{party}.{'server' if server else 'client'}.key").read_bytes(),
        (p / f"{party}.{'server' if server else 'client'}.crt").read_bytes(),
        (p / "ca.crt").read_bytes(),
    )
    if server:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def raw_server(cfg: dict[str, Any], addr: str, party: str, on_frame: Any) -> grpc.Server:
    opts = [("grpc.max_receive_message_length", CHUNK + MiB), ("grpc.max_send_message_length", CHUNK + MiB)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)

    def handle(it: Iterator[bytes], context: Any) -> bytes:
        # The least a receiver can do: take the chunks and keep them (no copy, no assembly).
        first = next(it)
        chunks = list(it)
        on_frame(first, chunks)
        return b"OK"

    def handle_one(msg: bytes, context: Any) -> bytes:
        # One message: the 9-byte header, then the bytes (kept as they are, not copied).
        on_frame(msg[:HEADER], [memoryview(msg)[HEADER:]])
        return b"OK"

    methods = {"Send": grpc.stream_unary_rpc_method_handler(handle), "SendOne": grpc.unary_unary_rpc_method_handler(handle_one)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("raw.Bench", methods),))
    if cfg["tls"]:
        server.add_secure_port(addr, raw_creds(cfg, party, True))
    else:
        server.add_insecure_port(addr)
    server.start()
    return server


class RawStub:
    """Sends bytes the way raw grpcio does it best for their size: bytes that fit one chunk as one
    unary message (header and bytes joined, one copy, as the communicator's SendOne), larger ones as
    a client-streaming RPC of CHUNK-sized pieces (as the communicator's Send)."""

    def __init__(self, cfg: dict[str, Any], addr: str, party_server: str, me: str) -> None:
        opts = [("grpc.max_receive_message_length", CHUNK + MiB), ("grpc.max_send_message_length", CHUNK + MiB)]
        if cfg["tls"]:
            self.channel = grpc.secure_channel(
                addr, raw_creds(cfg, me, False), options=opts + [("grpc.ssl_target_name_override", party_server)]
            )
        else:
            self.channel = grpc.insecure_channel(addr, options=opts)
        self.stream = self.channel.stream_unary("/raw.Bench/Send")
        self.one = self.channel.unary_unary("/raw.Bench/SendOne")

    def __call__(self, data: memoryview, flag: bytes) -> None:
        header = len(data).to_bytes(8, "little") + flag
        if len(data) <= CHUNK:
            self.one(b"".join((header, data)))
        else:
            self.stream(raw_chunks(header, data))


HEADER = 9  # 8-byte length and a 1-byte flag


def raw_chunks(header: bytes, data: memoryview) -> Iterator[bytes]:
    yield header
    for off in range(0, len(data), CHUNK):
        yield bytes(data[off : off + CHUNK])


def raw_peer(cfg: dict[str, Any], ready: Any, results: Any) -> None:
    stub = RawStub(cfg, cfg["send_addr"], "sender", "receiver")
    done = threading.Event()

    def on_frame(first: bytes, chunks: list[Any]) -> None:
        if first[8:9] == b"E":
            stub(memoryview(b"".join(chunks)), b"E")
        elif first[8:9] == b"S":
            done.set()

    server = raw_server(cfg, cfg["recv_addr"], "receiver", on_frame)  # keep a reference: a dropped server stops
    ready.set()
    done.wait()
    server.stop(0)
    os._exit(0)


class RawSide:
    """The sending side of the raw grpcio pair: the same bytes the communicator sends (an encoded
    frame of the tensor), the same chunk size and TLS setting."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.results = ctx.Event(), ctx.Queue()
        self.echoes: Queue[bytes] = Queue()
        self.server = raw_server(cfg, cfg["send_addr"], "sender", lambda first, chunks: self.echoes.put(b"".join(chunks)))
        self.proc = ctx.Process(target=raw_peer, args=(cfg, self.ready, self.results))
        self.proc.start()
        if not self.ready.wait(60):
            raise RuntimeError(f"the raw gRPC peer process did not start (exit code {self.proc.exitcode})")
        self.stub = RawStub(cfg, cfg["recv_addr"], "receiver", "sender")
        self.data: dict[int, memoryview] = {}

    def prepare(self, size: int) -> None:
        from splitlink import wire

        self.data = {size: memoryview(wire.pack({"x": torch.ones(size // 4)}, sender="sender", pool=None))}
        self.stub(self.data[size], b"N")

    def send(self, size: int) -> float:
        t0 = time.perf_counter()
        self.stub(self.data[size], b"N")
        return time.perf_counter() - t0

    def rtt(self) -> float:
        t0 = time.perf_counter()
        self.stub(memoryview(bytes(1024)), b"E")
        self.echoes.get(timeout=10)
        return time.perf_counter() - t0

    def close(self) -> dict[str, Any]:
        try:
            self.stub(memoryview(b""), b"S")
        except grpc.RpcError as e:
            # The peer stops its server as soon as it reads the stop message, which may cancel the
            # call before it answers.
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        finally:
            self.stub.channel.close()
            self.server.stop(0)
            self.proc.join(30)
        return {}


def measure(cfg_sl: dict[str, Any], cfg_raw: dict[str, Any], repeat: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both pairs up at once; every measurement alternates between them (ours, raw, ours, raw, ...)
    so that the machine's noise falls on both alike."""
    sides = {"splitlink": SplitlinkSide(cfg_sl), "raw_grpc": RawSide(cfg_raw)}
    out: dict[str, dict[str, Any]] = {k: {} for k in sides}
    try:
        for name, size in SIZES.items():
            for side in sides.values():
                side.prepare(size)
            times: dict[str, list[float]] = {k: [] for k in sides}
            for _ in range(repeat if size < 1024 * MiB else max(3, repeat // 3)):
                for k, side in sides.items():
                    times[k].append(side.send(size))
            for k in sides:
                out[k][name] = size / statistics.median(times[k]) / 1e9
            for side in sides.values():
                side.prepare(0)  # let the large buffers go before the next size
        rtts: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(300):
            for k, side in sides.items():
                rtts[k].append(side.rtt())
        for k in sides:
            r = sorted(rtts[k])
            out[k]["rtt_p50_ms"] = r[len(r) // 2] * 1e3
            out[k]["rtt_p99_ms"] = r[int(len(r) * 0.99)] * 1e3
    finally:
        for k, side in sides.items():
            out[k].update(side.close())
    return out["splitlink"], out["raw_grpc"]


def measure_parallel(cfgs: dict[str, dict[str, Any]], size: int, repeat: int) -> dict[str, float]:
    """Median GB/s of ``size``-byte frames for each side (``raw_grpc`` or a communicator configuration),
    all pairs up at once, measurements alternating between them."""
    sides: dict[str, Any] = {k: (RawSide(c) if k == "raw_grpc" else SplitlinkSide(c)) for k, c in cfgs.items()}
    times: dict[str, list[float]] = {k: [] for k in sides}
    held: list[tuple[float, float]] = []
    try:
        for side in sides.values():
            side.prepare(size)
        for _ in range(repeat):
            for k, side in sides.items():
                times[k].append(side.send(size))
        default = next(s for k, s in sides.items() if "connections" in k)
        held = [default.isend(size) for _ in range(repeat)]
    finally:
        for side in sides.values():
            side.close()
    out = {k: size / statistics.median(t) / 1e9 for k, t in times.items()}
    out["isend_returns_ms"] = statistics.median(h for h, _ in held) * 1e3
    out["isend_accepted_ms"] = statistics.median(w for _, w in held) * 1e3
    return out


def parallel_report(certs: str, tls: bool, repeat: int, streams: int) -> dict[str, Any]:
    variants = {
        "raw_grpc": None,
        "splitlink_1_stream": {"streams": 1},
        f"splitlink_{streams}_streams_{streams}_connections": {"streams": streams, "connections": True},
        f"splitlink_{streams}_streams_1_connection": {"streams": streams, "connections": False},
    }
    ports = free_ports(2 * len(variants))
    cfgs = {
        k: {
            "tls": tls,
            "certs": certs,
            "send_addr": f"127.0.0.1:{ports[2 * i]}",
            "recv_addr": f"127.0.0.1:{ports[2 * i + 1]}",
            **({"comm": v} if v is not None else {}),
        }
        for i, (k, v) in enumerate(variants.items())
    }
    gbps = measure_parallel(cfgs, 64 * MiB, repeat)
    held = {k: gbps.pop(k) for k in ("isend_returns_ms", "isend_accepted_ms")}
    return {
        "64MiB_GBps": gbps,
        "ratio_vs_raw_grpc_1_stream": {k: v / gbps["raw_grpc"] for k, v in gbps.items()},
        "parallel_isend_ms": held,
    }


def print_parallel(report: dict[str, Any]) -> None:
    print(
        f"64 MiB frames, parallel byte ranges vs ONE raw grpcio stream, same run ({os.cpu_count()} cores); "
        "GB/s (median) and ratio to raw"
    )
    for mode, r in report.items():
        for who, gbps in r["64MiB_GBps"].items():
            print(f"{mode:<10}{who:<40}{gbps:>9.3f}{r['ratio_vs_raw_grpc_1_stream'][who]:>9.2f}x")
        h = r["parallel_isend_ms"]
        print(
            f"{'':<10}isend of a 64 MiB frame returns in {h['isend_returns_ms']:.2f} ms; "
            f"accepted by the peer after {h['isend_accepted_ms']:.1f} ms"
        )
    print("target (issue 17, 16 cores, TLS): parallel >= 3 x one raw grpcio stream\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--parallel-only", action="store_true", help="only the 64 MiB parallel-streams comparison")
    ap.add_argument("--streams", type=int, default=4, help="streams of the parallel rows (default 4)")
    args = ap.parse_args()
    streams = args.streams
    report: dict[str, Any] = {}
    parallel: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as certs:
        make_dev_certs(certs, ["sender", "receiver"])
        for tls in (True, False):
            parallel["tls" if tls else "plaintext"] = parallel_report(certs, tls, args.repeat, streams)
        if args.parallel_only:
            if args.json:
                json.dump({"parallel": parallel}, sys.stdout, indent=2)
                print()
            else:
                print_parallel(parallel)
            return
        for tls in (False, True):
            mode = "tls" if tls else "plaintext"
            p = free_ports(4)
            cfg = {"tls": tls, "certs": certs, "send_addr": f"127.0.0.1:{p[0]}", "recv_addr": f"127.0.0.1:{p[1]}"}
            ours, raw = measure(cfg, {**cfg, "send_addr": f"127.0.0.1:{p[2]}", "recv_addr": f"127.0.0.1:{p[3]}"}, args.repeat)
            report[mode] = {
                "splitlink": ours,
                "raw_grpc": raw,
                "ratios": {**{k: ours[k] / raw[k] for k in SIZES}, "rtt_p50": ours["rtt_p50_ms"] / raw["rtt_p50_ms"]},
            }
    report["parallel"] = parallel
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print_parallel(report.pop("parallel"))
    print("two processes on 127.0.0.1, 4 MiB chunks; throughput in GB/s (median), latency of a 1 KiB frame echoed back\n")
    print(f"{'mode':<10}{'who':<11}" + "".join(f"{k:>9}" for k in SIZES) + f"{'rtt p50 ms':>12}{'rtt p99 ms':>12}")
    for mode, r in report.items():
        for who in ("splitlink", "raw_grpc"):
            row = r[who]
            print(
                f"{mode:<10}{who:<11}"
                + "".join(f"{row[k]:>9.3f}" for k in SIZES)
                + f"{row['rtt_p50_ms']:>12.3f}{row['rtt_p99_ms']:>12.3f}"
            )
        rt = r["ratios"]
        print(f"{'':<10}{'ratio':<11}" + "".join(f"{rt[k]:>9.2f}" for k in SIZES) + f"{rt['rtt_p50']:>12.2f}")
        print(
            f"{'':<10}receiver peak memory for the 1 GiB frame: {r['splitlink']['receiver_maxrss_delta_gib']:.2f} x frame size\n"
        )
    print("targets: 64 MiB and 1 GiB throughput >= 0.8 x raw; small-frame round trip <= 1.2 x raw; receiver peak <= 1.5 x")


if __name__ == "__main__":
    main()
