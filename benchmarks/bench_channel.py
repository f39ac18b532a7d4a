"""Communicator throughput and latency between two processes on 127.0.0.1, TLS on and off.

For frames of 1 KiB, 1 MiB, 64 MiB and 1 GiB (one float32 tensor): throughput of
``send_tensors`` to a peer process that receives them, and the round-trip latency (p50/p99) of a
1 KiB frame sent and echoed back. The baseline runs in the same run and the same process layout:
raw grpcio client-streaming RPCs with identity serializers, sending the same bytes in the same
chunk size with the same TLS setting, into a receiver that only keeps the chunks (no assembly, no
validation: an upper bound) and, for latency, echoes with a second RPC the way the communicator
does. Also the receiving process's peak memory for a 1 GiB frame. ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
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

MiB = 1 << 20
CHUNK = 4 * MiB
SIZES = {"1KiB": 1024, "1MiB": MiB, "64MiB": 64 * MiB, "1GiB": 1024 * MiB}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssl_for(d: str, party: str) -> SSLConfig:
    p = Path(d)
    return SSLConfig(server_cert_path=str(p / f"{party}.server.crt"), server_key_path=str(p / f"{party}.server.key"),
                     client_cert_path=str(p / f"{party}.client.crt"), client_key_path=str(p / f"{party}.client.key"),
                     ca_cert_path=str(p / "ca.crt"))


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
    comm = VerticalFederatedCommunicator(me, other, enable_ssl=cfg["tls"], ssl_config=cfg["tls"] and ssl_for(cfg["certs"], "receiver"),
                                         max_queue_bytes=4 << 30).launch()
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


def sl_measure(cfg: dict[str, Any], repeat: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=sl_peer, args=(cfg, ready, results))
    proc.start()
    if not ready.wait(60):
        raise RuntimeError(f"the splitlink peer process did not start (exit code {proc.exitcode})")
    me, other = ServerConfig("sender", cfg["send_addr"]), ServerConfig("receiver", cfg["recv_addr"])
    comm = VerticalFederatedCommunicator(me, other, enable_ssl=cfg["tls"], ssl_config=cfg["tls"] and ssl_for(cfg["certs"], "sender")).launch()
    out: dict[str, Any] = {}
    try:
        for name, size in SIZES.items():
            x = {"x": torch.ones(size // 4)}
            comm.send_tensors("receiver", x)  # warm-up (connection, buffers)
            times = []
            for _ in range(repeat if size < 1024 * MiB else max(2, repeat // 3)):
                t0 = time.perf_counter()
                comm.send_tensors("receiver", x)
                times.append(time.perf_counter() - t0)
            out[name] = size / statistics.median(times) / 1e9
        small = {"echo": torch.ones(256)}
        rtts = []
        for i in range(200):
            t0 = time.perf_counter()
            comm.send_tensors("receiver", small)
            comm.receive("receiver", timeout=10)
            rtts.append(time.perf_counter() - t0)
        rtts.sort()
        out["rtt_p50_ms"] = rtts[len(rtts) // 2] * 1e3
        out["rtt_p99_ms"] = rtts[int(len(rtts) * 0.99)] * 1e3
        comm.send_tensors("receiver", {"stop": torch.ones(1)})
        out["receiver_maxrss_delta_gib"] = results.get(timeout=60)[1] / (1 << 20)
    finally:
        comm.shutdown()
        proc.join(30)
    return out


# ---- raw grpcio baseline --------------------------------------------------------------------


def raw_creds(cfg: dict[str, Any], party: str, server: bool) -> Any:
    p = Path(cfg["certs"])
    key, cert, ca = (p / f"{party}.{'server' if server else 'client'}.key").read_bytes(), \
        (p / f"{party}.{'server' if server else 'client'}.crt").read_bytes(), (p / "ca.crt").read_bytes()
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

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("raw.Bench", {"Send": grpc.stream_unary_rpc_method_handler(handle)}),))
    if cfg["tls"]:
        server.add_secure_port(addr, raw_creds(cfg, party, True))
    else:
        server.add_insecure_port(addr)
    server.start()
    return server


def raw_stub(cfg: dict[str, Any], addr: str, party_server: str, me: str) -> Any:
    opts = [("grpc.max_receive_message_length", CHUNK + MiB), ("grpc.max_send_message_length", CHUNK + MiB)]
    if cfg["tls"]:
        ch = grpc.secure_channel(addr, raw_creds(cfg, me, False), options=opts + [("grpc.ssl_target_name_override", party_server)])
    else:
        ch = grpc.insecure_channel(addr, options=opts)
    return ch, ch.stream_unary("/raw.Bench/Send")


def raw_chunks(data: memoryview, flag: bytes) -> Iterator[bytes]:
    yield len(data).to_bytes(8, "little") + flag
    for off in range(0, len(data), CHUNK):
        yield bytes(data[off : off + CHUNK])


def raw_peer(cfg: dict[str, Any], ready: Any, results: Any) -> None:
    _, stub = raw_stub(cfg, cfg["send_addr"], "sender", "receiver")
    done = threading.Event()

    def on_frame(first: bytes, chunks: list[bytes]) -> None:
        if first[8:9] == b"E":
            stub(raw_chunks(memoryview(b"".join(chunks)), b"E"))
        elif first[8:9] == b"S":
            done.set()

    server = raw_server(cfg, cfg["recv_addr"], "receiver", on_frame)  # keep a reference: a dropped server stops
    ready.set()
    done.wait()
    server.stop(0)
    os._exit(0)


def raw_measure(cfg: dict[str, Any], repeat: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    echoes: Queue[bytes] = Queue()
    server = raw_server(cfg, cfg["send_addr"], "sender", lambda first, chunks: echoes.put(b"".join(chunks)))
    proc = ctx.Process(target=raw_peer, args=(cfg, ready, results))
    proc.start()
    if not ready.wait(60):
        raise RuntimeError(f"the raw gRPC peer process did not start (exit code {proc.exitcode})")
    channel, stub = raw_stub(cfg, cfg["recv_addr"], "receiver", "sender")
    out: dict[str, Any] = {}
    try:
        for name, size in SIZES.items():
            # The same bytes the communicator sends: an encoded frame of the tensor.
            from splitlink import wire

            data = memoryview(wire.pack({"x": torch.ones(size // 4)}, sender="sender", pool=None))
            stub(raw_chunks(data, b"N"))
            times = []
            for _ in range(repeat if size < 1024 * MiB else max(2, repeat // 3)):
                t0 = time.perf_counter()
                stub(raw_chunks(data, b"N"))
                times.append(time.perf_counter() - t0)
            out[name] = size / statistics.median(times) / 1e9
        small = memoryview(bytes(1024))
        rtts = []
        for _ in range(200):
            t0 = time.perf_counter()
            stub(raw_chunks(small, b"E"))
            echoes.get(timeout=10)
            rtts.append(time.perf_counter() - t0)
        rtts.sort()
        out["rtt_p50_ms"] = rtts[len(rtts) // 2] * 1e3
        out["rtt_p99_ms"] = rtts[int(len(rtts) * 0.99)] * 1e3
        stub(raw_chunks(memoryview(b""), b"S"))
    finally:
        channel.close()
        server.stop(0)
        proc.join(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as certs:
        make_dev_certs(certs, ["sender", "receiver"])
        for tls in (False, True):
            mode = "tls" if tls else "plaintext"
            cfg = {"tls": tls, "certs": certs, "send_addr": f"127.0.0.1:{free_port()}", "recv_addr": f"127.0.0.1:{free_port()}"}
            ours = sl_measure(cfg, args.repeat)
            cfg = {**cfg, "send_addr": f"127.0.0.1:{free_port()}", "recv_addr": f"127.0.0.1:{free_port()}"}
            raw = raw_measure(cfg, args.repeat)
            report[mode] = {"splitlink": ours, "raw_grpc": raw,
                            "ratios": {**{k: ours[k] / raw[k] for k in SIZES},
                                       "rtt_p50": ours["rtt_p50_ms"] / raw["rtt_p50_ms"]}}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print("two processes on 127.0.0.1, 4 MiB chunks; throughput in GB/s (median), latency of a 1 KiB frame echoed back\n")
    print(f"{'mode':<10}{'who':<11}" + "".join(f"{k:>9}" for k in SIZES) + f"{'rtt p50 ms':>12}{'rtt p99 ms':>12}")
    for mode, r in report.items():
        for who in ("splitlink", "raw_grpc"):
            row = r[who]
            print(f"{mode:<10}{who:<11}" + "".join(f"{row[k]:>9.3f}" for k in SIZES) + f"{row['rtt_p50_ms']:>12.3f}{row['rtt_p99_ms']:>12.3f}")
        rt = r["ratios"]
        print(f"{'':<10}{'ratio':<11}" + "".join(f"{rt[k]:>9.2f}" for k in SIZES) + f"{rt['rtt_p50']:>12.2f}")
        print(f"{'':<10}receiver peak memory for the 1 GiB frame: {r['splitlink']['receiver_maxrss_delta_gib']:.2f} x frame size\n")
    print("targets: 64 MiB and 1 GiB throughput >= 0.8 x raw; small-frame round trip <= 1.2 x raw; receiver peak <= 1.5 x")


if __name__ == "__main__":
    main()
