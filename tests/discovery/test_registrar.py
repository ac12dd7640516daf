"""The registrar sidecar as a real process (`lora-router register`) against real etcd and HTTP workers."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from disco_helpers import FakeFleet, until

from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.registry import Membership, WorkerRegistry
from router.devfleet import sim_worker, worker_url
from router.procs import ManagedProcess, python_cli

MakeClient = Callable[[], Awaitable[EtcdClient]]


class View:
    """One router's view of the membership, kept by a watch task."""

    def __init__(self, client: EtcdClient) -> None:
        self.seen: list[Membership] = []
        self.task = asyncio.create_task(self._follow(client))

    async def _follow(self, client: EtcdClient) -> None:
        async for m in WorkerRegistry(client).watch():
            self.seen.append(m)

    def workers(self) -> dict[str, object]:
        return dict(self.seen[-1].workers) if self.seen else {}

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def registrar(etcd: EmbeddedEtcd, url: str, tmp_path: Path, *args: str, ttl: int = 2) -> ManagedProcess:
    argv = python_cli("router", "register", "--etcd", etcd.endpoint, "--etcd-prefix", "/t", "--worker-url", url,
                      "--ttl", str(ttl), "--health-interval", "0.1", "--health-failures", "2", *args)
    return ManagedProcess(argv, log_path=tmp_path / f"registrar-{url.rsplit('/', 1)[1]}.log").start()


async def test_sigkill_leaves_within_ttl_sigterm_at_once(etcd: EmbeddedEtcd, clients: MakeClient, fleet: FakeFleet,
                                                         tmp_path: Path) -> None:
    views = [View(await clients()) for _ in range(2)]
    killed = registrar(etcd, fleet.add("a"), tmp_path, "--worker-id", "a", ttl=2)
    stopped = registrar(etcd, fleet.add("b"), tmp_path, "--worker-id", "b", ttl=30)
    try:
        await until(lambda: all(set(v.workers()) == {"a", "b"} for v in views), 20, "both workers registered")
        record = views[0].workers()["a"]
        assert record.base_models == ("sim-base",) and record.max_loras == 4 and record.slots == 4
        assert record.url == fleet.url("a") and record.instance

        killed.kill()
        await until(lambda: all("a" not in v.workers() for v in views), 2 + 1.0, "SIGKILL: gone within TTL + 1 s")

        stopped.signal(signal.SIGTERM)
        await until(lambda: all("b" not in v.workers() for v in views), 1.0, "SIGTERM: gone at once (TTL is 30 s)")
        assert stopped.proc is not None and stopped.proc.wait(5) == 0
    finally:
        killed.kill()
        stopped.kill()
        for v in views:
            await v.stop()


async def test_health_failures_withdraw_and_a_comeback_is_a_new_instance(etcd: EmbeddedEtcd, clients: MakeClient,
                                                                         fleet: FakeFleet, tmp_path: Path) -> None:
    secret = "sk-worker-secret-123"
    key_file = tmp_path / "worker.key"
    key_file.write_text(secret + "\n")
    url = fleet.add("w", api_key=secret)
    view = View(await clients())
    proc = registrar(etcd, url, tmp_path, "--api-key-file", str(key_file), "--api-key-ref", "/run/keys/w",
                     "--slots", "6", "--weight", "2", "--label", "zone=a", ttl=10)
    try:
        first = await until(lambda: next(iter(view.workers().values()), None), 20, "registered")
        assert first.slots == 6 and first.weight == 2.0 and first.labels == {"zone": "a"}
        assert first.api_key_ref == "/run/keys/w" and secret not in repr(first)

        fleet.workers["w"].healthy = False
        await until(lambda: not view.workers(), 3, "withdrawn after 2 failed checks (well before the 10 s TTL)")
        fleet.workers["w"].healthy = True
        fleet.workers["w"].restart()
        back = await until(lambda: next(iter(view.workers().values()), None), 5, "registered again")
        assert back.id == first.id and back.instance != first.instance

        fleet.workers["w"].restart()  # a restart between two checks: caught by the process start time
        await until(lambda: view.workers()[first.id].instance != back.instance, 5, "a new instance announced")
        assert set(fleet.workers["w"].auth_seen) == {f"Bearer {secret}"}
    finally:
        proc.stop()
        await view.stop()
    assert secret not in (tmp_path / "registrar-w.log").read_text()


async def test_registrar_whose_lease_expired_registers_again(etcd: EmbeddedEtcd, clients: MakeClient,
                                                             fleet: FakeFleet, tmp_path: Path) -> None:
    view = View(await clients())
    proc = registrar(etcd, fleet.add("p"), tmp_path, "--worker-id", "p", ttl=2)
    try:
        first = await until(lambda: view.workers().get("p"), 20, "registered")
        proc.signal(signal.SIGSTOP)  # frozen: no keepalives, the lease expires
        await until(lambda: "p" not in view.workers(), 2 + 1.0, "the frozen registrar's record expired")
        proc.signal(signal.SIGCONT)
        again = await until(lambda: view.workers().get("p"), 3, "registered again under a new lease")
        assert again.instance == first.instance, "the worker did not restart: same instance"
    finally:
        proc.signal(signal.SIGCONT)
        proc.kill()
        await view.stop()


async def test_etcd_kill_and_restart_registrars_and_routers_converge(etcd: EmbeddedEtcd, clients: MakeClient,
                                                                     fleet: FakeFleet, tmp_path: Path) -> None:
    views = [View(await clients()) for _ in range(3)]
    names = [f"k{i}" for i in range(3)]
    procs = [registrar(etcd, fleet.add(n), tmp_path, "--worker-id", n, ttl=2) for n in names]
    try:
        await until(lambda: all(set(v.workers()) == set(names) for v in views), 20, "all registered")
        before = views[0].workers()
        fleet.workers["k0"].healthy = False  # activity: k0 leaves while etcd goes down
        etcd.kill()
        down_at = time.monotonic()
        while time.monotonic() - down_at < 2 + 1.0:  # down longer than the TTL
            await asyncio.sleep(0.1)
        etcd.start()
        fleet.workers["k0"].healthy = True
        await until(lambda: all(set(v.workers()) == set(names) for v in views), 10, "everyone back in every view")
        await until(lambda: len({repr(v.workers()) for v in views}) == 1, 5, "identical views")
        for v in views:
            revisions = [m.revision for m in v.seen]
            assert revisions == sorted(set(revisions)), "a membership change seen twice or out of order"
        await until(lambda: all(v.workers()["k0"].instance != before["k0"].instance for v in views), 5,
                    "k0 came back as a new instance (its old record expired with its lease)")
        after = views[0].workers()
        assert after["k1"].instance == before["k1"].instance, "a worker that stayed up keeps its instance"
    finally:
        for p in procs:
            p.kill()
        for v in views:
            await v.stop()


async def test_registrar_started_before_etcd_and_worker_waits_for_both(etcd: EmbeddedEtcd, clients: MakeClient,
                                                                       fleet: FakeFleet, tmp_path: Path) -> None:
    etcd.kill()
    proc = registrar(etcd, fleet.url("early"), tmp_path, "--worker-id", "early", ttl=2)
    log = tmp_path / "registrar-early.log"
    try:
        await until(lambda: "waiting for worker" in log.read_text(), 20, "the registrar waits for its worker")
        fleet.add("early")
        await until(lambda: "cannot register early yet" in log.read_text(), 10, "then for etcd")
        etcd.start()
        view = View(await clients())
        try:
            await until(lambda: "early" in view.workers(), 10, "registered once etcd and the worker are up")
        finally:
            await view.stop()
    finally:
        proc.kill()


@pytest.mark.skipif(importlib.util.find_spec("bench.commands.worker") is None,
                    reason="the simulated worker (lora-bench worker) is not there yet")
async def test_registrar_with_simulated_vllm_worker_restart(etcd: EmbeddedEtcd, clients: MakeClient,
                                                             start_workers: Callable[..., list[ManagedProcess]],
                                                             tmp_path: Path) -> None:
    (worker,) = start_workers(1, extra_args=("--max-loras", "3"))
    url = worker_url(worker)
    view = View(await clients())
    proc = registrar(etcd, url, tmp_path, ttl=10)
    try:
        first = await until(lambda: next(iter(view.workers().values()), None), 20, "the sim worker registered")
        assert first.base_models == ("sim-base",) and first.max_loras == 3 and first.url == url

        worker.kill()  # the worker dies: withdrawn after 2 failed checks, long before the 10 s TTL
        await until(lambda: not view.workers(), 5, "withdrawn")
        port = int(url.rsplit(":", 1)[1])
        restarted = sim_worker(tmp_path, port=port, extra_args=("--max-loras", "3")).start()
        try:
            back = await until(lambda: next(iter(view.workers().values()), None), 20, "back after the restart")
            assert back.id == first.id and back.instance != first.instance
        finally:
            restarted.kill()
    finally:
        proc.stop()
        await view.stop()
