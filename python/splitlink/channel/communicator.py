"""Parties exchange frames over gRPC (HTTP/2) with mutual TLS.

``VerticalFederatedCommunicator`` has the API MindSpore Federated users know (``launch``,
``send_tensors``, ``receive``) and fixes what theirs gets wrong:

* **Mutual TLS.** The server asks every client for a certificate that chains to the configured CA,
  and the sender named in a frame must be the party named in that certificate (its common name
  or a DNS subject alternative name), so no party can speak for another
  (``splitlink.channel.identity``). A CRL (``crl_path``, signed by the CA) revokes client
  certificates. Plaintext is allowed only between loopback addresses unless ``allow_insecure=True``.
* **Streaming.** A frame travels as a client-streaming RPC of ``chunk_size`` pieces (4 MiB by
  default, the best measured here), so frames beyond protobuf's 2 GiB limit work and no base64 is
  involved. The receiver writes chunks straight into one pooled buffer; tensors view it.
* **Parallel streams.** A frame above ``parallel_threshold`` (8 MiB) is split into ``streams``
  contiguous byte ranges of whole chunks, sent at once as ``SendRange`` calls, each on its own
  connection (``connections=True``: TLS of each on its own core) or all on one HTTP/2 connection.
  Chunks are made from tensor memory as each call consumes them, so packing overlaps sending. The
  receiver writes each range at its offset into one pooled buffer and queues the frame when all
  ranges arrived; ranges are validated and retried one by one (``splitlink.channel.assembly``).
  ``streams`` defaults to one per two cores, at most 4; ``streams=1`` sends every frame as one
  stream (and talks to peers older than transport 1.1).
* **Asynchronous sends, posted receives.** ``isend`` returns a ``Work`` (``wait()``,
  ``is_completed()``) and packs and sends on a background thread per peer, in order, with at most
  ``max_inflight`` frames pending per peer (the next ``isend`` blocks); ``flush()`` waits for them and
  ``shutdown()`` flushes first. ``irecv`` posts a receive ahead (``splitlink.channel.work``).
* **A window of frames on the wire.** Up to ``max_inflight`` (at most ``MAX_WINDOW``, 8) of a peer's
  ``isend`` frames travel at once, each its own call (HTTP/2 multiplexes them on the connection), so
  a frame does not wait a round trip for the ack of the one before it. Each frame names the frame it
  follows (call metadata ``splitlink-after``) and the receiver delivers strictly in that order, holding
  a frame that overtook its predecessor (``splitlink.channel.inbox``). A receiver that orders says so
  in its acks (trailing metadata ``splitlink-order``); until one did, and for sealed frames (whose
  re-keying re-seals a frame under a new seq), frames go one at a time; a peer that restarts must say
  it again. A held frame is delivered only while its call is open (withdrawn when it ends; a frame
  sent in ranges whose completing call ended is answered ``splitlink-resend`` on the retry of that
  range, and the sender sends all of its ranges again, since the others were acknowledged), a frame's
  attempt timeout includes the frames ahead of it and its retry deadline starts when they settled. A
  frame that fails cancels the calls of the frames behind it, which the receiver then withdraws, and
  they fail with ``FrameNotSentError`` (``splitlink.channel.work`` says exactly what each outcome means).
* **Exactly once.** Every frame carries (sender, sender incarnation, seq); the incarnation is
  random per process, so a restarted sender's sequence numbers are not taken for duplicates. A
  sender retries on UNAVAILABLE and
  DEADLINE_EXCEEDED with exponential backoff and jitter (``splitlink.channel.retry``) until
  ``retry_deadline`` and then raises ``PeerUnavailableError`` naming peer and address; the receiver
  drops a seq it already accepted, so retries never deliver twice.
* **Back-pressure.** The receive queue of each peer is bounded in frames and bytes, counting the
  frames being received and those held for their predecessor: a call reserves room before its body
  is read (``splitlink.channel.inbox``). When it is full the receiver holds the RPC open and the
  sender waits; ``send_tensors`` returns only once the peer has accepted the frame into its queue.
  Nothing is dropped while the sender is told SUCCESS.
* **Timeouts.** ``receive(peer, timeout=...)`` raises ``TimeoutError`` naming the peer; a peer that
  shuts down cleanly wakes blocked receivers with ``PeerClosedError``.
* **Peer restarts.** A party announces itself (its random incarnation) to every peer at ``launch``.
  When a peer comes back as a new process, the survivor learns it exactly once, as
  ``PeerRestartedError``: from ``receive`` (which the announcement wakes, so a survivor blocked
  waiting for the dead peer does not sit out its timeout) or from ``send_tensors``. Frames name the
  receiver incarnation they were meant for, so a frame meant for the dead process is turned away
  instead of being taken by the new one as the answer to something else; frames the dead process
  sent but the survivor had not received are discarded. The new process cannot continue the old one's
  conversation, so the application agrees on where to resume (the examples roll back to the newest
  checkpoint both parties hold and continue: the survivor keeps running).

* **End-to-end sealing** (``seal=True``). At the first send to a peer the parties exchange fresh
  X25519 public keys over the mutually authenticated channel (a ``Hello`` RPC whose sender must
  match its certificate) and derive per-direction session keys (``splitlink.channel.keys``); frames
  are then sealed in the same pass that packs them, so relays that terminate TLS see only
  ciphertext. A restarted peer has new keys; senders re-agree and re-seal transparently.

The messages on the wire are encoded and decoded in ``splitlink.channel.protocol`` and documented in
``protos/splitlink/v1/transport.proto``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from splitlink import secure, wire
from splitlink.channel import protocol
from splitlink.channel.assembly import Assembler, RangeDelivered, RangeRefused
from splitlink.channel.config import ServerConfig, SSLConfig, is_loopback, revoked_serials
from splitlink.channel.errors import PeerRestartedError, PeerUnavailableError
from splitlink.channel.identity import CertificateIdentityInterceptor
from splitlink.channel.inbox import DROPPED, DUPLICATE, QUEUED, WITHDRAWN, HeldTooMany, Inbox, Slot
from splitlink.channel.keys import KeySession
from splitlink.channel.protocol import ProtocolError
from splitlink.channel.retry import RetryGaveUp, RetryPolicy
from splitlink.channel.work import FrameNotSentError, PostedReceives, ReceiveQueue, SendQueue, Settled, Window, Work
from splitlink.codec import CompressConfig, ErrorFeedback
from splitlink.errors import CryptoError, SplitlinkError

__all__ = ["VerticalFederatedCommunicator", "GrpcEndpoints", "MiB"]

logger = logging.getLogger(__name__)

MiB = 1 << 20
# Streams (ranges) per large frame: one per two cores, at most 4. Measured (benchmarks/bench_channel.py,
# 64 MiB frames over loopback, where both parties share the cores): on 2 cores parallel ranges are
# slower than one stream (each stream's TLS and copies need a core on each side), so a 2-core machine
# sends one stream; issue 17 measures the 16-core case.
DEFAULT_STREAMS = max(1, min(4, (os.cpu_count() or 1) // 2))
# Frames of one peer on the wire at once (the window). A receiver holds a call open (a server thread)
# for each frame (each range of one) that waits for its predecessor, so the server has threads for a
# full window of calls per peer, and the window stays within the inbox's reorder bound (inbox.MAX_HELD).
MAX_WINDOW = 8
# Call metadata: the seq of the frame this one must be delivered after (absent: none in flight), and
# the receiver's answer that it delivers in that order (senders open their window only then).
AFTER_KEY, ORDERED = "splitlink-after", ("splitlink-order", "1")
# Trailing metadata of the answer to a range of a frame that was assembled, then withdrawn before it was
# delivered (the call that completed it ended first): the sender sends all of the frame's ranges again.
RESEND = ("splitlink-resend", "1")


class _RekeyNeeded(Exception):
    """The receiver could not open our sealed frame: agree on session keys again."""


@dataclass(frozen=True)
class GrpcEndpoints:
    """Creates this party's gRPC server and its channels to peers, all with the same options.

    * **Message limits**: one chunk plus 1 MiB of headroom. Frames are streamed in chunks, so no
      message is larger; anything larger is refused by gRPC before it is buffered.
    * **Keepalive**: a ping every ``keepalive_s`` (30 s) without traffic and a 10 s timeout detect a
      dead peer (killed process, cut cable) within ~40 s while costing nothing measurable; pings are
      allowed without calls so idle parties (waiting for the other side's step) are monitored too.
    * **Reconnection**: gRPC's defaults (first retry after 1 s, backing off to 120 s) would turn a
      0.1 s network blip into seconds of both parties idling, since each waits on the other every
      step; one peer's reconnect attempts cost nothing, so retry after 0.1 s and back off to at most 5 s.
    * **TLS** (``pem`` from ``SSLConfig.load()``): servers require a client certificate of the CA;
      channels present the client certificate and check the server's against the peer's name (its
      certificate carries it as a subject alternative name).
    """

    chunk_size: int
    keepalive_s: float
    pem: dict[str, bytes] | None = None  # None: plaintext (loopback only, checked by the communicator)

    def options(self) -> list[tuple[str, Any]]:
        limit = self.chunk_size + MiB
        keepalive_ms = int(self.keepalive_s * 1000)
        return [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms),
        ]

    def server(
        self, address: str, handlers: grpc.GenericRpcHandler, *, workers: int, interceptors: Sequence[grpc.ServerInterceptor] = ()
    ) -> tuple[grpc.Server, int]:
        """A server listening on ``address`` (not started yet) and its port (0: could not listen)."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers), options=self.options(), interceptors=list(interceptors)
        )
        server.add_generic_rpc_handlers((handlers,))
        if self.pem is not None:
            creds = grpc.ssl_server_credentials(
                [(self.pem["server_key"], self.pem["server_cert"])], root_certificates=self.pem["ca"], require_client_auth=True
            )
            return server, server.add_secure_port(address, creds)
        return server, server.add_insecure_port(address)

    def channel(self, address: str, peer: str, connection: int = 0) -> grpc.Channel:
        """A channel to the party ``peer`` at ``address`` (connects lazily). Channels of different
        ``connection`` numbers have connections (and TLS sessions) of their own: gRPC shares one
        connection between channels of equal options unless told to keep a pool per channel."""
        options = self.options()
        if connection:
            options += [("grpc.use_local_subchannel_pool", 1), ("splitlink.connection", connection)]
        if self.pem is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.pem["ca"], private_key=self.pem["client_key"], certificate_chain=self.pem["client_cert"]
            )
            return grpc.secure_channel(address, creds, options=options + [("grpc.ssl_target_name_override", peer)])
        return grpc.insecure_channel(address, options=options)


class VerticalFederatedCommunicator(PostedReceives):
    """One party's endpoint: a gRPC server at its own address, channels to its peers."""

    def __init__(
        self,
        http_server_config: ServerConfig,
        remote_server_config: ServerConfig | Sequence[ServerConfig],
        enable_ssl: bool = False,
        ssl_config: SSLConfig | None = None,
        compress_configs: Mapping[str, CompressConfig] | None = None,
        *,
        allow_insecure: bool = False,
        chunk_size: int = 4 * MiB,
        max_queue_frames: int = 128,
        max_queue_bytes: int = 4 << 30,
        max_frame_bytes: int = 64 << 30,
        retry_deadline: float = 60.0,
        keepalive_s: float = 30.0,
        seal: bool = False,
        cipher: str | None = None,
        min_bandwidth: float = 4 * MiB,
        streams: int | None = None,
        parallel_threshold: int = 8 * MiB,
        connections: bool = True,
        max_inflight: int = 4,
    ) -> None:
        remotes = [remote_server_config] if isinstance(remote_server_config, ServerConfig) else list(remote_server_config)
        if not remotes:
            raise ValueError("remote_server_config must name at least one peer")
        names = [r.server_name for r in remotes]
        if len(set(names)) != len(names) or http_server_config.server_name in names:
            raise ValueError(f"party names must be unique: this party {http_server_config.server_name!r}, peers {names}")
        if enable_ssl and ssl_config is None:
            raise ValueError("enable_ssl=True needs ssl_config=SSLConfig(...)")
        if not enable_ssl and not allow_insecure:
            hosts = [http_server_config.host] + [r.host for r in remotes]
            remote = [h for h in hosts if not is_loopback(h)]
            if remote:
                raise ValueError(
                    f"enable_ssl=False sends tensors in plaintext; that is only allowed between loopback addresses, "
                    f"but {remote} are not. Enable TLS (enable_ssl=True, ssl_config=...) or pass allow_insecure=True"
                )
        if not MiB // 16 <= chunk_size <= 512 * MiB:
            raise ValueError(f"chunk_size must be 64 KiB..512 MiB, got {chunk_size}")
        if streams is None:
            streams = DEFAULT_STREAMS
        if not 1 <= streams <= 64:
            raise ValueError(f"streams must be 1..64 parallel streams per large frame, got {streams}")
        if parallel_threshold < chunk_size:
            raise ValueError(
                f"parallel_threshold ({parallel_threshold}) must be >= chunk_size ({chunk_size}): "
                "frames are split into ranges of whole chunks"
            )
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1 frame per peer, got {max_inflight}")
        self.streams = streams
        self.parallel_threshold = parallel_threshold
        self.connections = connections
        self.max_inflight = max_inflight
        self.me = http_server_config
        self.peers = {r.server_name: r for r in remotes}
        self.enable_ssl = enable_ssl
        self.ssl_config = ssl_config
        self.compress_configs = dict(compress_configs or {})
        self.chunk_size = chunk_size
        self.max_frame_bytes = max_frame_bytes
        self.retry_deadline = retry_deadline
        self.keepalive_s = keepalive_s
        if not min_bandwidth > 0:
            raise ValueError(f"min_bandwidth must be > 0 bytes/s, got {min_bandwidth}")
        self.min_bandwidth = float(min_bandwidth)
        self._inboxes = {name: Inbox(name, max_queue_frames, max_queue_bytes) for name in self.peers}
        self._seq = {name: 0 for name in self.peers}
        self._feedback = {name: ErrorFeedback() for name in self.peers}
        self._send_locks = {name: threading.Lock() for name in self.peers}
        self._last_started = {name: 0 for name in self.peers}  # seq of the frame started last
        # peer -> the process of it whose acks said it delivers in `after` order (a restarted peer may not)
        self._ordered: dict[str, int] = {}
        # peer -> seq -> bytes of the frames started and not settled: a frame's attempt may take as long
        # as the frames ahead of it, which the receiver delivers first
        self._unacked: dict[str, dict[int, int]] = {name: {} for name in self.peers}
        self._unacked_lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._hello_stubs: dict[str, Any] = {}
        self._announce_stubs: dict[str, Any] = {}
        self._one_stubs: dict[str, Any] = {}
        self._range_stubs: dict[str, list[Any]] = {}
        self._assembler = Assembler()
        self._assembler.retired_by(lambda sender, incarnation: incarnation in self._inboxes[sender].retired)
        self._range_pool: futures.ThreadPoolExecutor | None = None
        self._sends = {
            name: SendQueue(
                name, max_inflight, self._start_send, f"splitlink-isend-{name}", functools.partial(self._window_of, name)
            )
            for name in self.peers
        }
        self._receives = {name: ReceiveQueue(name, f"splitlink-irecv-{name}") for name in self.peers}
        # Frames in flight are reused once released (fresh memory is first touched at ~2 GB/s here,
        # reused memory copied at 6-17 GB/s); the pool may keep what the receive queue may hold, so a
        # steady stream of 1 GiB frames reuses its buffers too (the pool's own default keeps 1 GiB).
        self._pool = wire.BufferPool(max_buffers=max(4, max_queue_frames // 4), max_bytes=max_queue_bytes + max_queue_bytes // 8)
        self._closed = threading.Event()
        self._incarnation = random.SystemRandom().getrandbits(64)
        self.seal = seal
        # Both parties must name the same cipher (it is bound into the keys); default AES-256-GCM.
        self.cipher = cipher or "aes-256-gcm"
        self._keys = KeySession(self.me.server_name, self.cipher)

    # -- lifecycle ----------------------------------------------------------------------------

    def launch(self) -> VerticalFederatedCommunicator:
        """Starts this party's server and opens channels to the peers (connections are lazy)."""
        if self._server is not None:
            raise RuntimeError("launch() was already called")
        methods = {
            "Send": grpc.stream_unary_rpc_method_handler(self._handle),
            "SendOne": grpc.unary_unary_rpc_method_handler(self._handle_one),
            "SendRange": grpc.stream_unary_rpc_method_handler(self._handle_range),
            "Announce": grpc.unary_unary_rpc_method_handler(self._announced),
        }
        if self.seal:
            self._keys.start()
            methods["Hello"] = grpc.unary_unary_rpc_method_handler(self._hello)
        interceptors: list[grpc.ServerInterceptor] = []
        pem = None
        if self.enable_ssl:
            assert self.ssl_config is not None
            pem = self.ssl_config.load()
            revoked = revoked_serials(pem["crl"], pem["ca"], self.ssl_config.crl_path) if "crl" in pem else set()
            interceptors.append(CertificateIdentityInterceptor(protocol.claimed_party, revoked, self.me.server_name))
        endpoints = GrpcEndpoints(self.chunk_size, self.keepalive_s, pem)
        server, port = endpoints.server(
            self.me.server_address,
            grpc.method_handlers_generic_handler(protocol.SERVICE, methods),
            # per peer: key agreement and announcements, and every call of a full window (each frame's
            # ranges wait for room in the order of the frames, holding their threads)
            workers=4 + (2 + MAX_WINDOW * self.streams) * len(self.peers),
            interceptors=interceptors,
        )
        if port == 0:
            raise OSError(f"cannot listen on {self.me.server_address} for '{self.me.server_name}' (address in use?)")
        server.start()
        self._server = server
        if self.streams > 1:
            # every range of a full window at once: ranges of a later frame, started first, wait at the
            # receiver for the frame before it, which must not wait for a thread behind them
            self._range_pool = futures.ThreadPoolExecutor(
                self.streams * min(self.max_inflight, MAX_WINDOW) * len(self.peers), thread_name_prefix="splitlink-range"
            )
        for name, cfg in self.peers.items():
            channel = endpoints.channel(cfg.server_address, name)
            self._channels[name] = channel
            self._stubs[name] = channel.stream_unary(protocol.SEND)
            self._one_stubs[name] = channel.unary_unary(protocol.SEND_ONE)
            self._hello_stubs[name] = channel.unary_unary(protocol.HELLO)
            self._announce_stubs[name] = channel.unary_unary(protocol.ANNOUNCE)
            if self.streams > 1:
                # One connection per stream (TLS of each on its own core), or all streams on the one
                # connection (HTTP/2 multiplexing); see bench_channel.py for which is faster.
                extra = (
                    [endpoints.channel(cfg.server_address, name, i) for i in range(1, self.streams)] if self.connections else []
                )
                self._channels.update({f"{name}#{i}": c for i, c in enumerate(extra, 1)})
                self._range_stubs[name] = [c.stream_unary(protocol.SEND_RANGE) for c in [channel] + extra]
            threading.Thread(target=self._announce, args=(name,), name=f"splitlink-announce-{name}", daemon=True).start()
        logger.info(
            "[%s] listening on %s (%s)",
            self.me.server_name,
            self.me.server_address,
            "mutual TLS" if self.enable_ssl else "plaintext, loopback",
        )
        return self

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every ``isend`` frame was accepted by its peer; raises the first error nobody saw."""
        for sends in self._sends.values():
            sends.flush(timeout)

    def shutdown(self, grace: float = 2.0) -> None:
        """Waits (up to ``retry_deadline``) for ``isend`` frames still in flight, then closes."""
        if self._server is not None and not self._closed.is_set():
            for sends in self._sends.values():
                try:
                    sends.flush(self.retry_deadline)
                except Exception as e:  # noqa: BLE001 - shutting down: report, do not raise
                    logger.warning("[%s] frames to '%s' not delivered at shutdown: %s", self.me.server_name, sends.peer, e)
        self._closed.set()
        for sends in self._sends.values():
            sends.close()
        if self._range_pool is not None:
            self._range_pool.shutdown(wait=False)
        for inbox in self._inboxes.values():
            inbox.close()
        for channel in self._channels.values():
            channel.close()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> VerticalFederatedCommunicator:
        if self._server is None:
            self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _retry(self, first_delay: float = 0.05, max_delay: float = 5.0, *, deadline: bool = True) -> RetryPolicy:
        return RetryPolicy(first_delay, max_delay, self.retry_deadline if deadline else None)

    def _where(self, peer: str) -> str:
        return f"'{peer}' at {self.peers[peer].server_address}"

    # -- sending ------------------------------------------------------------------------------

    def _chunks(self, header: bytes, frame: Any) -> Iterator[bytes]:
        yield header
        if isinstance(frame, memoryview):  # a sealed frame
            for off in range(0, len(frame), self.chunk_size):
                yield bytes(frame[off : off + self.chunk_size])
        else:  # wire.pack_chunks: each chunk filled straight from tensor memory
            for i in range(len(frame)):
                yield frame.chunk(i)

    def send_tensors(
        self, target_server_name: str, tensors: Mapping[str, Any], *, step: int | None = None, kind: str = "tensors"
    ) -> None:
        """Sends a (nested) mapping of tensors; returns once the peer accepted it into its queue.

        ``kind`` labels the frame (authenticated with it when sealed), e.g. ``"psi"`` for set
        intersection messages; ``receive(..., kind=...)`` checks it. Frames still in flight from
        ``isend`` go first (order is kept per peer): the frame goes through the peer's send queue like
        theirs, so concurrent ``isend`` calls cannot slip between them."""
        self._check_send(target_server_name)
        sends = self._sends[target_server_name]
        try:
            sends.submit(target_server_name, tensors, step, kind).wait()
        except FrameNotSentError:
            sends.raise_unseen_error()  # the error of the earlier frame that stopped this one
            raise

    def isend(
        self, target_server_name: str, tensors: Mapping[str, Any], *, step: int | None = None, kind: str = "tensors"
    ) -> Work:
        """``send_tensors`` without waiting: returns a ``Work`` whose ``wait()`` returns once the peer
        accepted the frame (or raises why not). A background thread packs and sends; frames to a peer
        go in the order of the calls. At most ``max_inflight`` frames per peer are pending: the next
        call blocks until one is accepted. Do not modify the tensors before ``wait()`` returns."""
        self._check_send(target_server_name)
        return self._sends[target_server_name].submit(target_server_name, tensors, step, kind)

    def _check_send(self, peer: str) -> None:
        if peer not in self.peers:
            raise ValueError(f"unknown peer {peer!r}; peers: {', '.join(self.peers)}")
        if self._server is None:
            raise RuntimeError("call launch() before send_tensors()")
        if self._closed.is_set():
            raise RuntimeError("the communicator was shut down")

    def _window_of(self, peer: str) -> int:
        """Frames to ``peer`` that may be on the wire at once: one until the peer's current process said
        it delivers in order (a peer that restarted, perhaps with an older version, must say it again)."""
        inbox = self._inboxes[peer]
        current = inbox.incarnation if inbox.incarnation is not None else inbox.told
        ordered = current is not None and self._ordered.get(peer) == current
        return min(self.max_inflight, MAX_WINDOW) if ordered and not self.seal else 1

    def _start_send(
        self,
        peer: str,
        tensors: Mapping[str, Any],
        step: int | None,
        kind: str,
        *,
        chained: bool,
        window: Window,
        settled: Settled,
    ) -> Callable[[], None]:
        """``isend``'s frame, packed on the peer's queue thread in submission order; returns the call that
        sends it (``SendQueue`` runs it on a thread of its own). ``chained``: the frame started before
        this one is still on the wire and must be delivered first; ``settled``: set once it is."""
        if self.seal:  # one at a time (the window is 1): re-keying re-seals the frame under a new seq
            self._send_now(peer, tensors, step, kind)
            return lambda: None
        with self._send_locks[peer]:
            self._seq[peer] += 1
            seq = self._seq[peer]
            after = self._last_started[peer] if chained else 0
            self._last_started[peer] = seq
            frame = self._pack_chunks(peer, tensors, seq, step, kind)
            with self._unacked_lock:
                self._unacked[peer][seq] = frame.nbytes

        def send() -> None:
            try:
                self._send_frame(peer, seq, step or 0, frame, after, window, settled if chained else None)
            finally:
                with self._unacked_lock:
                    self._unacked[peer].pop(seq, None)

        return send

    def _pack_chunks(self, peer: str, tensors: Mapping[str, Any], seq: int, step: int | None, kind: str) -> Any:
        return wire.pack_chunks(
            tensors,
            chunk_size=self.chunk_size,
            sender=self.me.server_name,
            seq=seq,
            step=step or 0,
            kind=kind,
            compress=self.compress_configs,
            error_feedback=self._feedback[peer],
            pool=self._pool,
        )

    def _send_now(self, target_server_name: str, tensors: Mapping[str, Any], step: int | None, kind: str) -> None:
        """Packs and sends one frame and waits for its answer (nothing else to this peer is on the wire)."""
        with self._send_locks[target_server_name]:
            feedback = self._feedback[target_server_name]
            # Packing updates the error-feedback residuals; a re-pack after re-keying must start from
            # the residuals before the attempt that never arrived, or the dropped error is added twice.
            saved = feedback.state_dict() if self.seal and feedback.residuals else None
            for attempt in range(3):
                if attempt and saved is not None:
                    feedback.load_state_dict(saved)
                self._seq[target_server_name] += 1
                seq = self._last_started[target_server_name] = self._seq[target_server_name]
                frame: Any
                if self.seal:
                    frame = memoryview(
                        wire.pack(
                            tensors,
                            sender=self.me.server_name,
                            seq=seq,
                            step=step or 0,
                            kind=kind,
                            compress=self.compress_configs,
                            error_feedback=self._feedback[target_server_name],
                            pool=self._pool,
                            sealer=self._ensure_keys(target_server_name),
                        )
                    )
                else:
                    frame = self._pack_chunks(target_server_name, tensors, seq, step, kind)
                try:
                    self._send_frame(target_server_name, seq, step or 0, frame)
                    return
                except _RekeyNeeded as e:
                    # The peer restarted (new session keys) or lost ours: agree on keys again, re-seal.
                    logger.info("[%s] re-keying with '%s': %s", self.me.server_name, target_server_name, e)
                    self._keys.forget(target_server_name)
            raise PeerUnavailableError(f"'{target_server_name}' kept rejecting our session keys; is it the same deployment?")

    def _ensure_keys(self, peer: str) -> secure.Sealer:
        """Session keys with `peer`, agreed over this (mutually authenticated) channel if needed."""
        sealer = self._keys.sealer(peer)
        if sealer is not None:
            return sealer
        request = protocol.Hello(self.me.server_name, self._keys.public_bytes).encode()
        try:
            peer_public = self._retry().call(lambda: self._hello_stubs[peer](request, timeout=30), stop=self._closed)
        except RetryGaveUp as g:
            raise PeerUnavailableError(f"key agreement with {self._where(peer)} failed: {_status(g.last)}") from None
        except grpc.RpcError as e:
            raise PeerUnavailableError(f"key agreement with {self._where(peer)} failed: {_status(e)}") from None
        return self._keys.install(peer, bytes(peer_public))

    def _hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            hello = protocol.Hello.decode(request)
        except ProtocolError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if hello.sender not in self.peers:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unknown party {hello.sender!r}")
        try:
            self._keys.install(hello.sender, hello.public_key)
        except SplitlinkError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"key agreement failed: {e}")
        return self._keys.public_bytes

    def _call(self, peer: str, stub: Any, request: Any, timeout: float, after: int, window: Window | None) -> bytes:
        """One attempt of a frame's call: its answer; cancelled (``FrameNotSentError``) when ``window`` is
        abandoned. Learns from the answer's trailing metadata whether ``peer`` delivers in order."""
        call = stub.future(request, wait_for_ready=False, timeout=timeout, metadata=((AFTER_KEY, str(after)),) if after else None)
        if window is not None:
            window.track(call)
        try:
            answer = bytes(call.result())
        except grpc.FutureCancelledError:
            raise FrameNotSentError(f"frame to '{peer}' abandoned: an earlier frame failed, or shutdown") from None
        finally:
            if window is not None:
                window.untrack(call)
        if ORDERED in (call.trailing_metadata() or ()):
            try:
                self._ordered[peer] = protocol.Ack.decode(answer).incarnation  # this process of the peer orders
            except ProtocolError:
                pass  # _acknowledged reports the bad answer
        return answer

    def _send_frame(
        self,
        peer: str,
        seq: int,
        step: int,
        frame: Any,
        after: int = 0,
        window: Window | None = None,
        settled: Settled | None = None,
    ) -> None:
        """Sends ``frame`` (after frame ``after``; 0: none on the wire) and handles the answer. ``settled``
        (a chained frame): set once the frames ahead of it are settled; its retry deadline starts then."""
        inbox = self._inboxes[peer]
        total = frame.nbytes
        if total > self.parallel_threshold and peer in self._range_stubs:
            return self._send_ranges(peer, seq, step, frame, after, window, settled)
        header = protocol.StreamHeader(self.me.server_name, self._incarnation, inbox.told or 0, seq, step, total).encode()

        def attempt() -> bytes:
            timeout = self._budget(peer, seq, total)
            # A bounded attempt: a connection that stalls without failing (a half-open TCP
            # connection, a middlebox that stops forwarding) becomes DEADLINE_EXCEEDED and is
            # retried, instead of waiting for keepalive to notice.
            if total <= self.chunk_size:
                # One message, no request stream (gRPC would consume a stream on a thread of its own).
                one = b"".join((header, frame)) if isinstance(frame, memoryview) else frame.chunk(0, header)
                return self._call(peer, self._one_stubs[peer], one, timeout, after, window)
            return self._call(peer, self._stubs[peer], self._chunks(header, frame), timeout, after, window)

        def log_retry(attempts: int, error: BaseException, delay: float) -> None:
            logger.warning(
                "[%s] '%s' unavailable (%s); retry %d in %.2f s",
                self.me.server_name,
                peer,
                _status(error).partition(":")[0],
                attempts,
                delay,
            )

        try:
            ack = self._retry().call(
                attempt,
                stop=self._closed if window is None else window.abandoned,
                on_retry=log_retry,
                since=None if settled is None else (lambda: settled.at),
            )
        except RetryGaveUp as g:
            raise PeerUnavailableError(
                f"{self._where(peer)} unreachable for {self.retry_deadline:.0f} s "
                f"({g.attempts} attempts; last: {_status(g.last)})"
            ) from None
        except grpc.RpcError as e:
            if self.seal and e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION):
                raise _RekeyNeeded(_status(e)) from None
            raise PeerUnavailableError(f"{self._where(peer)} refused frame seq {seq}: {_status(e)}") from None
        self._acknowledged(peer, seq, [ack])

    def _acknowledged(self, peer: str, seq: int, acks: Sequence[bytes]) -> None:
        """Handles the answers to a frame's call(s): one per call; ranges answer PART but the last."""
        inbox = self._inboxes[peer]
        try:
            answers = [protocol.Ack.decode(ack) for ack in acks]
        except ProtocolError as e:
            raise PeerUnavailableError(f"{self._where(peer)} {e}: is it running the same splitlink version?") from None
        final = [a for a in answers if a.status != protocol.ACK_PART]
        if not final:
            raise PeerUnavailableError(
                f"{self._where(peer)} stored every range of frame seq {seq} but never "
                "completed it: is it running the same splitlink version?"
            )
        answer = next((a for a in final if a.status == protocol.ACK_STALE), final[0])
        if answer.status == protocol.ACK_STALE:
            inbox.acknowledge(answer.incarnation)
            raise PeerRestartedError(peer, f"frame seq {seq} was meant for its previous process")
        inbox.learn(answer.incarnation)
        if answer.status == protocol.ACK_DUP:
            logger.info("[%s] frame seq %d to '%s' was already delivered (retry)", self.me.server_name, seq, peer)

    def _ranges(self, total: int) -> list[tuple[int, int]]:
        """(offset, length) of the ranges a frame of ``total`` bytes is sent in: whole chunks, split as
        evenly as the chunk count allows over ``streams`` ranges."""
        chunks = -(-total // self.chunk_size)
        parts = min(self.streams, chunks)
        bounds = [chunks * i // parts * self.chunk_size for i in range(parts)] + [total]
        return [(bounds[i], min(bounds[i + 1], total) - bounds[i]) for i in range(parts)]

    def _send_ranges(
        self, peer: str, seq: int, step: int, frame: Any, after: int, window: Window | None, settled: Settled | None
    ) -> None:
        """Sends ``frame`` as parallel ``SendRange`` calls, one per range, each on its own stream (and
        connection, with ``connections=True``); chunks are produced as the call consumes them, so
        packing overlaps sending; each range is retried on its own; the receiver assembles them."""
        inbox = self._inboxes[peer]
        total = frame.nbytes
        chunk_lock = threading.Lock()  # FrameChunks.chunk is not safe to call from several threads at once
        stubs = self._range_stubs[peer]
        meant_for = inbox.told or 0

        def chunks(offset: int, length: int) -> Iterator[bytes]:
            yield protocol.RangeHeader(
                self.me.server_name, self._incarnation, meant_for, seq, step, total, offset, length
            ).encode()
            for off in range(offset, offset + length, self.chunk_size):
                if isinstance(frame, memoryview):  # a sealed frame
                    yield bytes(frame[off : min(off + self.chunk_size, offset + length)])
                else:
                    with chunk_lock:
                        piece = frame.chunk(off // self.chunk_size)
                    yield piece

        def send_range(index: int, offset: int, length: int) -> bytes:
            stub = stubs[index % len(stubs)]
            return self._retry().call(
                lambda: self._call(peer, stub, chunks(offset, length), self._budget(peer, seq, total), after, window),
                stop=self._closed if window is None else window.abandoned,
                since=None if settled is None else (lambda: settled.at),
                on_retry=lambda n, e, d: logger.warning(
                    "[%s] range %d of frame seq %d to '%s' failed (%s); retry %d in %.2f s",
                    self.me.server_name,
                    index,
                    seq,
                    peer,
                    _status(e).partition(":")[0],
                    n,
                    d,
                ),
            )

        def send_all() -> tuple[list[bytes], list[BaseException]]:
            assert self._range_pool is not None
            pending = [self._range_pool.submit(send_range, i, o, n) for i, (o, n) in enumerate(self._ranges(total))]
            acks: list[bytes] = []
            errors: list[BaseException] = []
            for f in pending:
                try:
                    acks.append(f.result())
                except BaseException as e:  # noqa: BLE001 - the first error is raised below
                    errors.append(e)
            return acks, errors

        started = time.monotonic()
        resends = 0
        while True:
            acks, errors = send_all()
            resend = [e for e in errors if isinstance(e, grpc.RpcError) and RESEND in (e.trailing_metadata() or ())]
            if not resend or len(resend) < len(errors) or time.monotonic() - started > self.retry_deadline:
                break
            # The receiver assembled the frame, then withdrew it before delivering it (the call that
            # completed it ended: a connection cut, a timeout); the ranges it had acknowledged are gone.
            resends += 1
            logger.warning(
                "[%s] frame seq %d to '%s' was withdrawn after it was assembled (%s); sending all of its ranges again (%d)",
                self.me.server_name,
                seq,
                peer,
                _status(resend[0]).partition(":")[0],
                resends,
            )
        if errors:
            first = errors[0]
            if isinstance(first, RetryGaveUp):
                raise PeerUnavailableError(
                    f"{self._where(peer)} unreachable for {self.retry_deadline:.0f} s "
                    f"({first.attempts} attempts; last: {_status(first.last)})"
                ) from None
            if isinstance(first, grpc.RpcError):
                if first.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise PeerUnavailableError(
                        f"{self._where(peer)} does not accept frames in parallel ranges ({_status(first)}): it runs an "
                        "older splitlink. Upgrade it, or pass streams=1 to this party's communicator"
                    ) from None
                if self.seal and first.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION):
                    raise _RekeyNeeded(_status(first)) from None
                raise PeerUnavailableError(f"{self._where(peer)} refused frame seq {seq}: {_status(first)}") from None
            raise first
        self._acknowledged(peer, seq, acks)

    def _announce(self, peer: str) -> None:
        """Tells ``peer`` which process this is (and learns which process it is), retrying until it
        answers: a peer that knew an earlier process of this party learns that it restarted."""
        request = protocol.Announcement(self.me.server_name, self._incarnation).encode()
        try:
            answer = self._retry(0.05, 2.0, deadline=False).call(
                lambda: bytes(self._announce_stubs[peer](request, timeout=10)), stop=self._closed
            )
        except RetryGaveUp:  # shut down before the peer answered
            return
        except grpc.RpcError as e:
            if not self._closed.is_set():
                logger.warning("[%s] '%s' refused our announcement: %s", self.me.server_name, peer, _status(e))
            return
        except ValueError:  # the channel was closed by shutdown()
            return
        incarnation = protocol.decode_incarnation(answer)
        if incarnation is not None:
            self._inboxes[peer].learn(incarnation)

    def _announced(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            announcement = protocol.Announcement.decode(request)
        except ProtocolError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if announcement.sender not in self._inboxes:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unknown party {announcement.sender!r}")
        self._inboxes[announcement.sender].see(announcement.incarnation)
        return protocol.encode_incarnation(self._incarnation)

    def attempt_timeout(self, nbytes: int) -> float:
        """Seconds one send attempt may take: 10 s plus the frame at ``min_bandwidth`` bytes/s."""
        return 10.0 + nbytes / self.min_bandwidth

    def _budget(self, peer: str, seq: int, nbytes: int) -> float:
        """Seconds an attempt of frame ``seq`` (``nbytes``) may take: its own ``attempt_timeout`` plus
        those of the unacknowledged frames ahead of it in the window, which the receiver delivers first
        (it holds this frame until then: a small frame behind a large one on a slow link waits for it)."""
        with self._unacked_lock:
            ahead = [n for s, n in self._unacked[peer].items() if s < seq]
        return self.attempt_timeout(nbytes) + sum(self.attempt_timeout(n) for n in ahead)

    # -- receiving ----------------------------------------------------------------------------
    # With TLS, CertificateIdentityInterceptor has checked that the certificate names the party that
    # the first message claims to be before any handler here runs.

    def _handle_one(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            _, end = protocol.StreamHeader.decode(request, "message")
        except ProtocolError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        view = memoryview(request)
        return self._receive_frame(view[:end], iter((view[end:],)), context)

    def _handle(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        try:
            first = next(request_iterator)
        except StopIteration:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream")
        return self._receive_frame(first, request_iterator, context)

    def _receive_frame(self, first: Any, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> bytes:
        try:
            head, _ = protocol.StreamHeader.decode(first)
        except ProtocolError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        sender, seq, total = head.sender, head.seq, head.total
        inbox, after, turned_away = self._admit(head, request_iterator, context)
        if turned_away is not None:
            return turned_away
        slot = self._reserve(inbox, head.incarnation, seq, after, total, context)
        if isinstance(slot, str):  # a retry of a frame delivered or held meanwhile: its body is not read
            for _ in request_iterator:  # drain
                pass
            return self._answer(slot, seq, after, context)
        try:
            buf = self._pool.acquire(total)
            view = memoryview(buf)
            pos = 0
            for chunk in request_iterator:
                end = pos + len(chunk)
                if end > total:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"frame longer than its declared {total} bytes")
                view[pos:end] = chunk
                pos = end
            if pos != total:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"frame of {pos} bytes, declared {total}")
            del view
            return self._deliver(sender, head.incarnation, seq, buf, context, slot)
        finally:
            inbox.release(slot)  # nothing if the frame was queued or held

    def _reserve(
        self, inbox: Inbox, incarnation: int, seq: int, after: int, total: int, context: grpc.ServicerContext
    ) -> Slot | str:
        """Room in the receive queue for frame ``seq`` before its body is read (``Inbox.reserve``); a frame
        that would wait beyond the reorder bound aborts the call."""
        try:
            slot = inbox.reserve(incarnation, seq, after, total, context.is_active)
        except HeldTooMany as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}: frames must follow their predecessors")
        if slot == WITHDRAWN:
            context.abort(grpc.StatusCode.CANCELLED, "sender went away while the queue was full")
        return slot

    def _admit(
        self, head: protocol.StreamHeader | protocol.RangeHeader, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> tuple[Inbox, int, bytes | None]:
        """The sender's inbox, the seq of the frame this one follows (call metadata, checked), and the
        answer to a frame (or range) this party does not take: meant for its previous process (STALE) or
        already delivered (DUP, a retry), its stream drained; None: take it. An unknown sender, an
        oversized frame or a bad predecessor aborts the call before its body is read."""
        if head.sender not in self._inboxes:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"unknown sender {head.sender!r}")
        if head.total > self.max_frame_bytes:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"frame of {head.total} bytes exceeds max_frame_bytes")
        after = self._after(context, head.seq)
        inbox = self._inboxes[head.sender]
        status = None
        if head.meant_for not in (0, self._incarnation):
            inbox.see(head.incarnation)
            status = protocol.ACK_STALE  # meant for this party's previous process
        elif inbox.is_duplicate(head.incarnation, head.seq):
            status = protocol.ACK_DUP  # the sender retried a frame (or a range of one) already delivered
        if status is None:
            return inbox, after, None
        for _ in request_iterator:  # drain
            pass
        return inbox, after, protocol.Ack(status, self._incarnation).encode()

    @staticmethod
    def _after(context: grpc.ServicerContext, seq: int) -> int:
        """The seq of the frame the sender wants frame ``seq`` delivered after (0: none), from the call's
        metadata: a frame of the sender's window, so ``0 < after < seq`` and ``seq - after <= MAX_WINDOW``."""
        for key, value in context.invocation_metadata() or ():
            if key == AFTER_KEY:
                after = (
                    int(value) if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 20 else -1
                )
                if not 0 < after < seq or seq - after > MAX_WINDOW:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{AFTER_KEY} must be the seq of one of the {MAX_WINDOW} frames before frame {seq}, got {value!r:.40}",
                    )
                return after
        return 0

    def _deliver(self, sender: str, incarnation: int, seq: int, buf: Any, context: grpc.ServicerContext, slot: Slot) -> bytes:
        """A complete frame from the network: opened (sealed), checked against its stream header, queued
        after the frame it follows (``inbox.put``, into the room ``slot`` reserved for it)."""
        inbox = self._inboxes[sender]
        if self.seal:
            opener = self._keys.opener(sender)
            if opener is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no session keys with this sender yet: agree keys first")
            assert opener is not None  # context.abort raised
            try:
                buf, *_ = opener.open(buf, pool=self._pool)
            except CryptoError as e:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        try:
            origin = protocol.frame_origin(buf)
        except ProtocolError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if origin != (sender, seq):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "frame header does not match its stream header")
        slot.alive = context.is_active  # this call answers for the frame (for ranges: the one that completed it)
        try:
            outcome = inbox.put(slot, buf)
        except HeldTooMany as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}: frames must follow their predecessors")
        return self._answer(outcome, seq, slot.after, context)

    def _answer(self, outcome: str, seq: int, after: int, context: grpc.ServicerContext) -> bytes:
        """The answer to a frame's call by what became of the frame (``inbox`` outcomes): OK when queued,
        DUP when delivered before (a retry); an error when it was not delivered and never will be."""
        if outcome == WITHDRAWN:
            context.abort(
                grpc.StatusCode.CANCELLED, f"frame seq {seq} was withdrawn: its call ended before frame {after} was delivered"
            )
        if outcome == DROPPED:
            context.abort(
                grpc.StatusCode.ABORTED,
                f"frame seq {seq} was dropped before frame {after} was delivered: a later frame that follows none came "
                "first (its sender gave up on it) or its sender restarted",
            )
        context.set_trailing_metadata((ORDERED,))
        return protocol.Ack(protocol.ACK_OK if outcome == QUEUED else protocol.ACK_DUP, self._incarnation).encode()

    def _handle_range(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        """One range of a frame sent in parallel ranges (``SendRange``); see ``assembly``."""
        try:
            head = protocol.RangeHeader.decode(next(request_iterator))
        except StopIteration:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty stream")
        except ProtocolError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        sender, seq, total = head.sender, head.seq, head.total
        inbox, after, turned_away = self._admit(head, request_iterator, context)
        if turned_away is not None:
            return turned_away

        def reserve(nbytes: int, alive: Callable[[], bool]) -> Slot:
            slot = self._reserve(inbox, head.incarnation, seq, after, nbytes, context)
            if slot in (DUPLICATE, QUEUED):
                raise RangeDelivered()
            if isinstance(slot, str):
                raise RangeRefused("ABORTED", f"frame seq {seq} was {slot} while its range arrived")
            return slot

        token: object | None = None
        assembly = None
        try:
            assembly = self._assembler.begin(
                sender, head.incarnation, seq, total, context.is_active, reserve, self._pool.acquire, inbox.release
            )
            token = assembly.claim(head.offset, head.length)
            if token is None:
                for _ in request_iterator:  # drain: this range already arrived (a retried range)
                    pass
                return protocol.Ack(protocol.ACK_PART, self._incarnation).encode()
            pos = 0
            for chunk in request_iterator:
                end = pos + len(chunk)
                if end > head.length:
                    raise RangeRefused("INVALID_ARGUMENT", f"range longer than its declared {head.length} bytes")
                assembly.write(head.offset, token, pos, chunk)
                pos = end
            if pos != head.length:
                raise RangeRefused("INVALID_ARGUMENT", f"range of {pos} bytes, declared {head.length}")
            complete = assembly.finish(head.offset, token)
            token = None
        except RangeDelivered:
            for _ in request_iterator:  # drain: a retried range of a frame assembled meanwhile
                pass
            # held for its predecessor: this call takes it over and answers when it is delivered
            outcome = inbox.rewait(seq, context.is_active)
            if outcome == WITHDRAWN:  # its other ranges were acknowledged already: all must come again
                self._assembler.forget(sender, head.incarnation, seq)
                context.set_trailing_metadata((RESEND,))
                context.abort(
                    grpc.StatusCode.ABORTED,
                    f"frame seq {seq} was withdrawn (the call that completed it ended before frame {after} was "
                    "delivered): send all of its ranges again",
                )
            return self._answer(outcome, seq, after, context)
        except RangeRefused as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        finally:
            if token is not None and assembly is not None:
                assembly.release(head.offset, token)  # failed: the range is free for the sender's retry
        if not complete:
            return protocol.Ack(protocol.ACK_PART, self._incarnation).encode()
        assert assembly is not None and assembly.room is not None  # complete: the range was written into it
        self._assembler.finish(sender, assembly)
        try:
            return self._deliver(sender, head.incarnation, seq, assembly.buf, context, assembly.room)
        finally:
            inbox.release(assembly.room)  # nothing if the frame was queued or held

    def _receive_now(self, peer: str, timeout: float | None, kind: str | None, with_kind: bool, device: Any = None) -> Any:
        """The next frame from ``peer``, decoded (``receive``). ``device`` (e.g. ``"cuda:0"``): the payload
        is copied to the device once from pinned memory and decoded there (``wire.unpack(device=)``);
        ``None`` keeps the zero-copy CPU tensors that view the received bytes."""
        frame = wire.unpack(self._inboxes[peer].get(timeout), device=device)
        protocol.check_kind(frame.kind, kind, peer)
        return (frame.kind, frame.tensors) if with_kind else frame.tensors


def _status(error: BaseException) -> str:
    """``CODE: details`` of a failed gRPC call."""
    if isinstance(error, grpc.RpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)
