"""A TCP proxy on loopback that injects network faults between two parties (tests only).

Bytes from the client (the sending party) to the server (the receiving party's gRPC server) can be
corrupted (one byte flipped once the stream has carried ``corrupt_after`` bytes), delayed (per chunk),
or the proxy can cut every connection and refuse new ones for a while (``cut(seconds)``, now, or once the
stream has carried ``cut_after`` bytes: a cut that surely lands on a live connection).

Counters: ``forwarded`` bytes, ``corrupted`` bytes flipped in a live stream, ``cuts`` made and
``cuts_hit`` (those that closed at least one live connection), ``connections`` accepted.
"""

from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.corrupt_after: int | None = None
        self.delay_s = 0.0
        self.forwarded = 0
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
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
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
                    if cut_now:  # the chunk that crossed cut_after is dropped with the connection
                        self.cut(self.cut_seconds)
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
