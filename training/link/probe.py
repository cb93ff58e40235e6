"""A TCP transfer over 127.0.0.1 that checks the rate a (shaped) loopback achieves, for a large message and
for small ones.

Run inside the namespace (``ip netns exec NAME python -c ...``, :func:`command`): it prints one JSON line,
``{"large_bps": ..., "small_bps": ..., ...}``. Large: one stream of ``large_bytes``. Small: ``small_count``
request/response rounds of ``small_bytes`` (the reply is 1 byte), so each round also pays the link's
latency and the burst: this is what a collective's many small messages see. No JAX is imported.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time

IO_TIMEOUT_S = 120.0  # any one socket operation


def _recv_exactly(conn: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += len(chunk)


def _transfer(nbytes: int, rounds: int) -> float:
    """Seconds to send ``rounds`` messages of ``nbytes`` (rounds > 1: each waits for a 1-byte reply)."""
    server = socket.socket()
    server.settimeout(IO_TIMEOUT_S)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    errors: list[BaseException] = []

    def serve():
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT_S)
                for _ in range(rounds):
                    _recv_exactly(conn, nbytes)
                    conn.sendall(b"k")
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller)
            errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(server.getsockname(), timeout=IO_TIMEOUT_S) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message = b"\0" * nbytes
        start = time.perf_counter()
        for _ in range(rounds):
            client.sendall(message)
            if client.recv(1) != b"k":
                raise ConnectionError("no reply")
        seconds = time.perf_counter() - start
    thread.join(IO_TIMEOUT_S)
    server.close()
    if errors:
        raise errors[0]
    return seconds


def measure(large_bytes: int, small_bytes: int, small_count: int) -> dict:
    """Achieved bits/s for one large message and for ``small_count`` small request/response rounds."""
    large_s = _transfer(large_bytes, 1)
    small_s = _transfer(small_bytes, small_count)
    return {"large_bytes": large_bytes, "large_s": large_s, "large_bps": 8 * large_bytes / large_s,
            "small_bytes": small_bytes, "small_count": small_count, "small_s": small_s,
            "small_bps": 8 * small_bytes * small_count / small_s}


def sizes_for(rate_bps: float | None, seconds: float = 0.5) -> tuple[int, int, int]:
    """(large_bytes, small_bytes, small_count): about ``seconds`` at ``rate_bps`` for each part (unshaped:
    8 MB), within [64 KiB, 16 MB] and [4, 64] rounds of 16 KiB."""
    small = 16 * 1024
    budget = 8e6 if rate_bps is None else rate_bps / 8 * seconds
    large = int(min(max(budget, 64 * 1024), 16e6))
    count = int(min(max(budget / small, 4), 64))
    return large, small, count


def command(python: str, large_bytes: int, small_bytes: int, small_count: int) -> list[str]:
    """The command line (to run inside the namespace) that prints :func:`measure`'s JSON."""
    return [python, "-c", f"from training.link import probe; probe.main({large_bytes}, {small_bytes}, {small_count})"]


def main(large_bytes: int, small_bytes: int, small_count: int) -> None:
    print(json.dumps(measure(large_bytes, small_bytes, small_count)))
    sys.stdout.flush()
