"""The soak's descriptor check on real processes: connection churn (what pooled keep-alives do under load)
must not read as a leak, a real leak must.

Issue 14 saw the quick soak fail on a busy machine with all open descriptors compared at two quiet
moments (33 -> 44): the difference was pooled connections, whose number follows concurrency."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from bench.chaos.observe import client_connections, fds_besides_connections
from bench.chaos.scenarios.soak import FD_GROWTH, rise

CHILD = r"""
import os, random, socket, sys, time
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(512)
kept, rng = [], random.Random(7)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pairs = []
    for _ in range(rng.randint(0, 30)):
        client = socket.create_connection(server.getsockname())
        pairs.append((client, server.accept()[0]))
    time.sleep(rng.uniform(0.1, 0.5))
    for client, accepted in pairs:
        client.close(); accepted.close()
    if sys.argv[1] == "leak":  # about 10 descriptors a second
        kept += [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
"""


SERVER = r"""
import socket, threading
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(16)
print(server.getsockname()[1], flush=True)
def serve(conn):
    while conn.recv(1024):
        pass
    conn.close()
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def _sample(mode: str, seconds: float = 5.0) -> tuple[list[int], list[int]]:
    """(descriptors besides connections, all descriptors) of a child that churns connections, every 50 ms for
    `seconds` (fewer samples on a busy machine)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, "600"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        besides, every = [], []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            besides.append(fds_besides_connections(child.pid))
            every.append(len(os.listdir(f"/proc/{child.pid}/fd")))
            time.sleep(0.05)  # the sampling pace
        assert child.poll() is None, "the child ended before the sampling did"
        return besides, every
    finally:
        child.kill()
        child.wait()


def test_connection_churn_is_not_a_leak() -> None:
    besides, every = _sample("churn")
    assert max(every) - min(every) > FD_GROWTH, "the churn moves the raw count as pools do (else no test)"
    assert rise(besides) <= FD_GROWTH, besides


def test_a_real_leak_fails_the_check() -> None:
    besides, _ = _sample("leak")
    assert rise(besides) > FD_GROWTH, besides


def test_client_connections_counts_what_a_server_holds_open(poll_until) -> None:
    """The soak subtracts one task per client connection the router holds (aiohttp keeps a task for each)."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        poll_until(lambda: client_connections(server.pid, port) == 5, 10, what="5 client connections")
        for c in clients[:3]:
            c.close()
        poll_until(lambda: client_connections(server.pid, port) == 2, 10, what="2 left")
    finally:
        for c in clients:
            c.close()
        server.kill()
        server.wait()

