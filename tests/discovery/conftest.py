"""Discovery fixtures: connected etcd clients, stand-in workers, an async poll with a deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from disco_helpers import FakeFleet

from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient


@pytest.fixture
async def clients(etcd: EmbeddedEtcd) -> AsyncIterator[Callable[[], Awaitable[EtcdClient]]]:
    """Make as many clients of the test etcd as a test needs (each one a separate connection)."""
    made: list[EtcdClient] = []

    async def make() -> EtcdClient:
        client = await EtcdClient.connect([etcd.endpoint], prefix="/t")
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def fleet() -> AsyncIterator[FakeFleet]:
    fake = await FakeFleet().start()
    yield fake
    await fake.stop()

