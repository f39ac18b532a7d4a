"""Sealing, opening and masking against the OpenSSL the extension links, in one run.

* seal and open of 1 MiB and 64 MiB frames, on 1 thread and on all cores;
* reference: the linked OpenSSL's own EVP speed (one context, one update over the same bytes, in
  a tight loop in C++: what ``openssl speed -evp`` measures), and the ``cryptography`` package's
  ``AESGCM.encrypt_into`` (it bundles its own, newer OpenSSL: the peer reference);
* fused ``wire.pack(..., sealer=)`` against ``wire.pack`` then ``Sealer.seal``;
* masking (fixed-point encode + AES-CTR masks of one peer, one pass), unmasking, and the sum of
  two masked tensors, in GB/s of float32.

Medians of repeated runs. ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from _common import interleaved_medians, median_time
from splitlink import _core, secure, wire

MiB = 1 << 20


def measure_cipher(cipher: str, size: int, repeat: int) -> dict[str, float]:
    key = secure.Key(bytes(range(32)))
    # The tensor lives in the same kind of memory as frames (64-byte aligned, transparent huge pages
    # advised), so that fused-vs-seal-alone compares the fusion, not page sizes. The same fused
    # pack+seal reading torch's own 4 KiB pages (TLB misses) is printed beside it ("tensor in torch's
    # own 4 KiB pages"); how much slower that is depends on how fast the cipher is.
    x_torch = torch.randn(size // 4)
    x = torch.frombuffer(wire.FrameBuffer(size), dtype=torch.float32)
    x.copy_(x_torch)
    frame = wire.pack({"x": x}, sender="leader", seq=1)
    nbytes = len(frame)
    row: dict[str, float] = {"bytes": nbytes}
    code = secure.CIPHERS[cipher]
    row["evp_reference_gbps"] = nbytes / _core.secure.openssl_aead_reference(code, nbytes, max(5, repeat)) / 1e9
    for label, threads in (("1t", 1), ("all", 0)):
        sealed = secure.Sealer(key, "leader", cipher=cipher).seal(frame, threads=threads)
        seq = iter(range(2, 10**9))
        sealer = secure.Sealer(key, "leader", cipher=cipher)
        # Timed in turns, so that the ratios (fused vs seal alone) compare like with like.
        t = interleaved_medians(
            {
                "seal": lambda: secure.Sealer(key, "leader", cipher=cipher).seal(frame, threads=threads),
                "open": lambda: secure.Opener(key, "leader", cipher=cipher).open(sealed, threads=threads),
                "fused": lambda: wire.pack({"x": x}, sender="leader", seq=next(seq), sealer=sealer, threads=threads),
                "pack_then_seal": lambda: sealer.seal(wire.pack({"x": x}, sender="leader", seq=next(seq)), threads=threads),
                "fused_torch_mem": lambda: wire.pack(
                    {"x": x_torch}, sender="leader", seq=next(seq), sealer=sealer, threads=threads
                ),
            },
            repeat,
        )
        row[f"fused_torch_mem_s_{label}"] = t["fused_torch_mem"]
        t_seal, t_open, t_fused, t_pack_then_seal = t["seal"], t["open"], t["fused"], t["pack_then_seal"]
        row[f"seal_gbps_{label}"] = nbytes / t_seal / 1e9
        row[f"open_gbps_{label}"] = nbytes / t_open / 1e9
        row[f"seal_s_{label}"] = t_seal
        row[f"fused_pack_seal_s_{label}"] = t_fused
        row[f"pack_then_seal_s_{label}"] = t_pack_then_seal
    if cipher == "aes-256-gcm":
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aes = AESGCM(bytes(range(32)))
        src = bytes(frame)
        buf = bytearray(len(src) + 16)
        nonce = bytes(12)
        row["cryptography_encrypt_into_gbps"] = (
            nbytes / median_time(lambda: aes.encrypt_into(nonce, src, None, buf), repeat) / 1e9
        )
    return row


def measure_masking(n_floats: int, repeat: int) -> dict[str, float]:
    a, b = secure.KeyPair.generate(), secure.KeyPair.generate()
    sid = secure.new_session_id()
    ma = secure.PairwiseMasker("a", a, {"b": b.public_bytes}, session_id=sid)
    mb = secure.PairwiseMasker("b", b, {"a": a.public_bytes}, session_id=sid)
    x = torch.randn(n_floats)
    nbytes = x.numel() * 4
    out: dict[str, float] = {}
    # Masking draws 8 keystream bytes per 4-byte float: half the AES-128-CTR speed bounds it.
    ctr_s = _core.secure.openssl_ctr_reference(2 * nbytes, max(3, repeat // 2))
    out["ctr_reference_gbps"] = 2 * nbytes / ctr_s / 1e9
    out["mask_keystream_bound_gbps"] = out["ctr_reference_gbps"] / 2
    # Steady state: outputs preallocated and reused (writing fresh memory is bound by page faults).
    y_out = torch.empty(x.shape, dtype=torch.int64)
    x_out = torch.empty(x.shape, dtype=torch.float32)
    for label, threads in (("1t", 1), ("all", 0)):
        ya = ma.mask(x, stream_id=1, threads=threads)
        yb = mb.mask(x, stream_id=1, threads=threads)
        out[f"mask_gbps_{label}"] = (
            nbytes / median_time(lambda: ma.mask(x, stream_id=1, out=y_out, threads=threads), repeat) / 1e9
        )
        out[f"unmask_gbps_{label}"] = (
            nbytes / median_time(lambda: ma.unmask(ya, stream_id=1, out=x_out, threads=threads), repeat) / 1e9
        )
        out[f"sum2_gbps_{label}"] = (
            nbytes / median_time(lambda: secure.sum_masked([ya, yb], out=x_out, threads=threads), repeat) / 1e9
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    try:
        from cryptography.hazmat.backends.openssl import backend

        peer_openssl = backend.openssl_version_text()
    except Exception:  # noqa: BLE001 - informational only
        peer_openssl = "unknown"
    report: dict[str, Any] = {
        "linked_openssl": _core.openssl_version(),
        "cryptography_openssl": peer_openssl,
        "threads": _core.num_threads(),
        "cpu": _core.cpu_features(),
        "ciphers": {},
    }
    for cipher in ("aes-256-gcm", "chacha20-poly1305"):
        report["ciphers"][cipher] = {f"{s // MiB}MiB": measure_cipher(cipher, s, args.repeat) for s in (MiB, 64 * MiB)}
    report["masking_64MiB"] = measure_masking(16 * MiB, args.repeat)
    big = report["ciphers"]["aes-256-gcm"]["64MiB"]
    report["targets"] = {
        "seal_1t_vs_evp": big["seal_gbps_1t"] / big["evp_reference_gbps"],
        "open_1t_vs_evp": big["open_gbps_1t"] / big["evp_reference_gbps"],
        "seal_all_vs_evp": big["seal_gbps_all"] / big["evp_reference_gbps"],
        "open_all_vs_evp": big["open_gbps_all"] / big["evp_reference_gbps"],
        "fused_vs_seal_alone_all": big["fused_pack_seal_s_all"] / big["seal_s_all"],
        "fused_torch_mem_vs_seal_alone_all": big["fused_torch_mem_s_all"] / big["seal_s_all"],
        "mask_gbps_1t": report["masking_64MiB"]["mask_gbps_1t"],
        "unmask_gbps_1t": report["masking_64MiB"]["unmask_gbps_1t"],
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print(
        f"linked OpenSSL: {report['linked_openssl']} | cryptography's OpenSSL: {report['cryptography_openssl']} | "
        f"{report['threads']} threads | cpu {report['cpu']}"
    )
    print(f"median of {args.repeat} runs\n")
    print(
        f"{'cipher':<19}{'frame':>7}{'EVP ref':>9}{'seal 1t':>9}{'open 1t':>9}{'seal all':>10}{'open all':>10}"
        f"{'fused ms':>10}{'pack+seal ms':>14}{'seal ms':>9}{'crypto.io':>11}   (GB/s unless ms)"
    )
    for cipher, sizes in report["ciphers"].items():
        for size, r in sizes.items():
            peer = f"{r['cryptography_encrypt_into_gbps']:.2f}" if "cryptography_encrypt_into_gbps" in r else "-"
            print(
                f"{cipher:<19}{size:>7}{r['evp_reference_gbps']:>9.2f}{r['seal_gbps_1t']:>9.2f}{r['open_gbps_1t']:>9.2f}"
                f"{r['seal_gbps_all']:>10.2f}{r['open_gbps_all']:>10.2f}{r['fused_pack_seal_s_all'] * 1e3:>10.2f}"
                f"{r['pack_then_seal_s_all'] * 1e3:>14.2f}{r['seal_s_all'] * 1e3:>9.2f}{peer:>11}"
            )
    m = report["masking_64MiB"]
    print(
        f"\nmasking 64 MiB float32 (1 peer): mask {m['mask_gbps_1t']:.2f} GB/s 1t / {m['mask_gbps_all']:.2f} all; "
        f"unmask {m['unmask_gbps_1t']:.2f} / {m['unmask_gbps_all']:.2f}; "
        f"sum of 2 {m['sum2_gbps_1t']:.2f} / {m['sum2_gbps_all']:.2f}"
    )
    print(
        f"linked AES-128-CTR keystream: {m['ctr_reference_gbps']:.2f} GB/s on 1 thread, so masking one peer is bounded "
        f"by {m['mask_keystream_bound_gbps']:.2f} GB/s of float32 per core (8 keystream bytes per float)"
    )
    t = report["targets"]
    print(
        f"\nAES-256-GCM 64 MiB: seal/open on 1 thread = {t['seal_1t_vs_evp']:.2f} / {t['open_1t_vs_evp']:.2f} x EVP "
        f"(target >= 0.9); all cores = {t['seal_all_vs_evp']:.2f} / {t['open_all_vs_evp']:.2f} x EVP (target >= 1.7)"
    )
    print(
        f"fused pack+seal / seal alone: {t['fused_vs_seal_alone_all']:.2f} (target <= 1.2; tensor in torch's own "
        f"4 KiB pages: {t['fused_torch_mem_vs_seal_alone_all']:.2f})"
    )
    print(
        f"mask / unmask per core: {t['mask_gbps_1t']:.2f} / {t['unmask_gbps_1t']:.2f} GB/s (target >= 2; "
        f"{t['mask_gbps_1t'] / report['masking_64MiB']['mask_keystream_bound_gbps']:.2f} of the keystream bound)"
    )


if __name__ == "__main__":
    main()
