"""A TCP proxy on loopback that injects network faults between two parties (tests only).

Bytes from the client (the sending party) to the server (the receiving party's gRPC server) can be
corrupted (one byte flipped once the stream has carried ``corrupt_after`` bytes), delayed (per chunk),
or the proxy can cut every connection and refuse new ones for a while (``cut(seconds)``, now, or once the
stream has carried ``cut_after`` bytes: a cut that surely lands on a live connection).

As a delay line (``one_way_delay_s``, ``jitter_s``, read when a connection is accepted): each direction of
a connection has a reader that timestamps every chunk it reads and a writer that forwards the chunk when it is
due (read time + delay), so the path keeps its full rate while delayed (unlike ``delay_s``, which sleeps
before forwarding and so also caps the rate). Jitter draws each chunk's delay uniformly from
delay +- jitter but never lets a chunk overtake the one before it (no reordering, as on one TCP path). The
delay line keeps no bound on bytes in flight: the parties' TCP windows are not stretched by the delay the way
a real long path's are (see netem.py).

Counters: ``forwarded`` bytes (client to server), ``forwarded_down`` (server to client), ``corrupted`` bytes
flipped in a live stream, ``cuts`` made and ``cuts_hit`` (those that closed at least one live connection),
``connections`` accepted.
"""

from __future__ import annotations

import collections
import random
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int, *, one_way_delay_s: float = 0.0, jitter_s: float = 0.0) -> None:
        if one_way_delay_s < 0 or jitter_s < 0 or jitter_s > one_way_delay_s:
            raise ValueError(f"FaultProxy: need 0 <= jitter_s ({jitter_s}) <= one_way_delay_s ({one_way_delay_s})")
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.corrupt_after: int | None = None
        self.delay_s = 0.0
        self.one_way_delay_s = one_way_delay_s
        self.jitter_s = jitter_s
        self.forwarded = 0
        self.forwarded_down = 0
        self._rng = random.Random(0)
        self.corrupted = 0
        self.cut_after: int | None = None
        self.cut_seconds = 0.1
        self.cuts = 0
        self.cuts_hit = 0
        self.connections = 0
        self._down_until = 0.0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self, seconds: float) -> None:
        """Closes every connection now and refuses new ones for ``seconds``."""
        self._drop_all(seconds, count=True)

    def close(self) -> None:
        self._closed = True
        self._drop_all(0, count=False)
        self.listener.close()

    def _drop_all(self, seconds: float, count: bool) -> None:
        with self._lock:
            self._down_until = time.monotonic() + seconds
            if count:
                self.cuts += 1
                self.cuts_hit += any(s.fileno() != -1 for s in self._socks)  # a live connection
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._socks.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, server):  # forward small frames at once (Nagle + delayed ACK would add ~40 ms)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if time.monotonic() < self._down_until:  # cut() ran while this one was being set up
                    client.close()
                    server.close()
                    continue
                self._socks += [client, server]
                self.connections += 1
            if self.one_way_delay_s or self.jitter_s:
                for src, dst, up in ((client, server, True), (server, client, False)):
                    line: collections.deque[tuple[float, bytes | None]] = collections.deque()
                    ready = threading.Condition()
                    threading.Thread(target=self._read_line, args=(src, dst, up, line, ready), daemon=True).start()
                    threading.Thread(target=self._write_line, args=(src, dst, line, ready), daemon=True).start()
            else:
                threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _faults(self, data: bytes, upstream: bool) -> tuple[bytes, bool]:
        """Counts a chunk read from one side and applies the faults to it; (chunk, cut the connection now)."""
        if not upstream:
            with self._lock:
                self.forwarded_down += len(data)
            return data, False
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            start = self.forwarded
            self.forwarded += len(data)
            if self.corrupt_after is not None and start <= self.corrupt_after < self.forwarded:
                buf = bytearray(data)
                buf[self.corrupt_after - start] ^= 0x5A
                data = bytes(buf)
                self.corrupt_after = None
                self.corrupted += 1
            cut_now = self.cut_after is not None and self.cut_after < self.forwarded
            if cut_now:
                self.cut_after = None
        return data, cut_now

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                data, cut_now = self._faults(data, upstream)
                if cut_now:  # the chunk that crossed cut_after is dropped with the connection
                    self.cut(self.cut_seconds)
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _read_line(
        self,
        src: socket.socket,
        dst: socket.socket,
        upstream: bool,
        line: collections.deque[tuple[float, bytes | None]],
        ready: threading.Condition,
    ) -> None:
        """The reading half of a delay line: each chunk is queued with the time it is due at the far side."""
        due = 0.0
        try:
            while True:
                data = src.recv(65536)
                now = time.monotonic()
                if not data:
                    break
                data, cut_now = self._faults(data, upstream)
                if cut_now:
                    self.cut(self.cut_seconds)
                    break
                delay = self.one_way_delay_s
                if self.jitter_s:
                    delay += self._rng.uniform(-self.jitter_s, self.jitter_s)
                due = max(due, now + delay)  # never overtakes the chunk before it
                with ready:
                    line.append((due, data))
                    ready.notify()
        except OSError:
            pass
        with ready:  # end of stream: delivered after everything read before it
            line.append((max(due, time.monotonic() + self.one_way_delay_s), None))
            ready.notify()

    def _write_line(
        self,
        src: socket.socket,
        dst: socket.socket,
        line: collections.deque[tuple[float, bytes | None]],
        ready: threading.Condition,
    ) -> None:
        """The writing half: forwards each queued chunk when it is due."""
        try:
            while True:
                with ready:
                    while not line:
                        ready.wait()
                    due, data = line.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if data is None:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)
