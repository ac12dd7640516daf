"""The registrar sidecar as a real process (`lora-router register`) beside real simulated vLLM workers.

Workers are `lora-bench worker` processes; a worker "fails" by being killed and
"comes back" by starting again on the same port, as a restarted vLLM would.
Only the restart-seen-by-start-time case uses the in-test stand-in, because the
simulator does not export `process_start_time_seconds` (real vLLM's Prometheus
client does).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from disco_helpers import FakeFleet, until

from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.registry import Membership, WorkerRegistry
from router.localfleet import base_url, sim_worker
from router.procs import ManagedProcess, python_cli

MakeClient = Callable[[], Awaitable[EtcdClient]]
StartWorkers = Callable[..., list[ManagedProcess]]


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

    def only(self) -> object | None:
        return next(iter(self.workers().values()), None)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def registrar(etcd: EmbeddedEtcd, url: str, tmp_path: Path, *args: str, ttl: int = 2) -> ManagedProcess:
    argv = python_cli("router", "register", "--etcd", etcd.endpoint, "--etcd-prefix", "/t", "--worker-url", url,
                      "--ttl", str(ttl), "--health-interval", "0.1", "--health-failures", "2", *args)
    name = url.rstrip("/").rsplit("/", 1)[1].replace(":", "-")
    return ManagedProcess(argv, log_path=tmp_path / f"registrar-{name}.log").start()


def worker_on(tmp_path: Path, url: str, *extra: str) -> ManagedProcess:
    """A worker process on the port of `url` (a restart, when one ran there before: a new instance)."""
    return sim_worker(tmp_path, port=int(url.rsplit(":", 1)[1]), extra_args=extra).start()


async def test_sigkill_leaves_within_ttl_sigterm_at_once(etcd: EmbeddedEtcd, clients: MakeClient,
                                                         start_workers: StartWorkers, tmp_path: Path) -> None:
    a, b = (base_url(w) for w in start_workers(2, extra_args=("--max-loras", "3")))
    views = [View(await clients()) for _ in range(2)]
    killed = registrar(etcd, a, tmp_path, "--worker-id", "a", ttl=2)
    stopped = registrar(etcd, b, tmp_path, "--worker-id", "b", ttl=30)
    try:
        await until(lambda: all(set(v.workers()) == {"a", "b"} for v in views), 20, "both workers registered")
        record = views[0].workers()["a"]
        assert record.base_models == ("sim-base",) and record.max_loras == 3 and record.slots == 8
        assert record.url == a and record.instance

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


async def test_dead_worker_withdrawn_and_its_restart_is_a_new_instance(etcd: EmbeddedEtcd, clients: MakeClient,
                                                                       start_workers: StartWorkers,
                                                                       tmp_path: Path) -> None:
    secret = "sk-worker-secret-123"  # the worker demands it on /v1/*: no key, no base model, no registration
    key_file = tmp_path / "worker.key"
    key_file.write_text(secret + "\n")
    (worker,) = start_workers(1, extra_args=("--api-key", secret))
    url = base_url(worker)
    view = View(await clients())
    proc = registrar(etcd, url, tmp_path, "--api-key-file", str(key_file), "--api-key-ref", "/run/keys/w",
                     "--slots", "6", "--weight", "2", "--label", "zone=a", ttl=10)
    try:
        first = await until(view.only, 20, "registered (the key was sent)")
        assert first.slots == 6 and first.weight == 2.0 and first.labels == {"zone": "a"}
        assert first.api_key_ref == "/run/keys/w" and secret not in repr(first)

        worker.kill()
        await until(lambda: not view.workers(), 3, "withdrawn after 2 failed checks (well before the 10 s TTL)")
        restarted = worker_on(tmp_path, url, "--api-key", secret)
        try:
            back = await until(view.only, 20, "registered again once the worker is back")
            assert back.id == first.id and back.instance != first.instance
        finally:
            restarted.kill()
    finally:
        proc.stop()
        await view.stop()
    assert secret not in (tmp_path / f"registrar-{url.rsplit('/', 1)[1].replace(':', '-')}.log").read_text()


async def test_restart_between_two_checks_is_caught_by_start_time(etcd: EmbeddedEtcd, clients: MakeClient,
                                                                  fleet: FakeFleet, tmp_path: Path) -> None:
    view = View(await clients())
    proc = registrar(etcd, fleet.add("w"), tmp_path, ttl=10)
    try:
        first = await until(view.only, 20, "registered")
        fleet.workers["w"].restart()  # never failed a health check; only its start time tells
        await until(lambda: view.only() and view.only().instance != first.instance, 5, "a new instance announced")
        assert view.only().id == first.id
    finally:
        proc.stop()
        await view.stop()


async def test_registrar_whose_lease_expired_registers_again(etcd: EmbeddedEtcd, clients: MakeClient,
                                                             start_workers: StartWorkers, tmp_path: Path) -> None:
    (worker,) = start_workers(1)
    view = View(await clients())
    proc = registrar(etcd, base_url(worker), tmp_path, "--worker-id", "p", ttl=2)
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
                                                                     start_workers: StartWorkers,
                                                                     tmp_path: Path) -> None:
    workers = start_workers(3)
    urls = [base_url(w) for w in workers]
    names = [f"k{i}" for i in range(3)]
    views = [View(await clients()) for _ in range(3)]
    procs = [registrar(etcd, u, tmp_path, "--worker-id", n, ttl=2) for u, n in zip(urls, names, strict=True)]
    try:
        await until(lambda: all(set(v.workers()) == set(names) for v in views), 20, "all registered")
        before = views[0].workers()
        workers[0].kill()  # activity: k0's worker dies just as etcd goes down
        etcd.kill()
        await asyncio.sleep(2 + 1.0)  # an outage, not a wait for a state: etcd stays down longer than the TTL
        etcd.start()
        back = worker_on(tmp_path, urls[0])
        try:
            await until(lambda: all(set(v.workers()) == set(names) for v in views), 15, "everyone in every view")
            await until(lambda: all(v.workers()["k0"].instance != before["k0"].instance for v in views), 10,
                        "k0 came back as a new instance (its old record expired with its lease)")
            await until(lambda: len({repr(v.workers()) for v in views}) == 1, 5, "identical views")
        finally:
            back.kill()
        for v in views:
            revisions = [m.revision for m in v.seen]
            assert revisions == sorted(set(revisions)), "a membership change seen twice or out of order"
        after = views[0].workers()
        assert after["k1"].instance == before["k1"].instance, "a worker that stayed up keeps its instance"
    finally:
        for p in procs:
            p.kill()
        for v in views:
            await v.stop()


async def test_registrar_started_before_etcd_and_worker_waits_for_both(etcd: EmbeddedEtcd, clients: MakeClient,
                                                                       tmp_path: Path) -> None:
    from discovery.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    etcd.kill()
    proc = registrar(etcd, url, tmp_path, "--worker-id", "early", ttl=2)
    log = tmp_path / f"registrar-{url.rsplit('/', 1)[1].replace(':', '-')}.log"
    try:
        await until(lambda: "waiting for worker" in log.read_text(), 20, "the registrar waits for its worker")
        worker = worker_on(tmp_path, url)
        try:
            await until(lambda: "cannot register early yet" in log.read_text(), 20, "then for etcd")
            etcd.start()
            view = View(await clients())
            try:
                await until(lambda: "early" in view.workers(), 10, "registered once etcd and the worker are up")
            finally:
                await view.stop()
        finally:
            worker.kill()
    finally:
        proc.kill()
