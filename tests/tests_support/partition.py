"""A network partition between one operator replica and the API server: a TCP relay the
replica's kubeconfig points at, which can drop every byte both ways (`cut`) and later let
traffic through again (`heal`)."""

from __future__ import annotations

import socket
import threading

from ports import free_port


class Partition:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._cut = False
        # Connections opened before the latest heal: a partition that heals leaves the TCP
        # connections that lived through it dead, as their peers' timeouts would.
        self._era = 0
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.5)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._cut = True

    def heal(self) -> None:
        with self._lock:
            self._era += 1
            for connection in self._held:
                connection.close()
            self._held.clear()
            self._cut = False

    def close(self) -> None:
        self._closed.set()
        self.heal()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._cut:  # a SYN that gets through, and then silence
                    self._held.append(client)
                    continue
                era = self._era
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, era), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, era: int) -> None:
        source.settimeout(0.5)
        try:
            while era == self._era:
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if not self._cut:  # cut: the bytes are lost
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()
