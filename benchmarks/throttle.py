"""A TCP proxy on loopback that holds each connection's answers to a fixed rate (a slow link)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

_CHUNK = 64 * 1024


class Throttle:
    """Forwards 127.0.0.1:``port`` to ``upstream``, sending answers at ``bytes_per_second`` per
    connection (requests go through unthrottled)."""

    def __init__(self, upstream: tuple[str, int], bytes_per_second: float) -> None:
        self.upstream = upstream
        self.rate = bytes_per_second
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False

    def __enter__(self) -> Throttle:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.rate), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, rate: float) -> None:
        started, sent = time.monotonic(), 0
        try:
            while data := source.recv(_CHUNK):
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                target.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
