"""The cold-start and overflow ranking: HRW over the workers that can serve the adapter, healthy ones
only, kept between requests but never stale after a membership or catalog change."""

from __future__ import annotations

from allocator.hrw import rank_workers
from discovery.records import AdapterRecord, WorkerRecord
from router.coldstart import ColdStarter
from router.fleet import Fleet
from router.metrics import RouterMetrics


def _records(n: int, rank: int = 16, base: str = "base") -> dict[str, WorkerRecord]:
    return {f"w{i}": WorkerRecord(id=f"w{i}", url=f"http://127.0.0.1:{9000 + i}", base_models=(base,),
                                  max_lora_rank=rank) for i in range(n)}


def _starter(fleet: Fleet) -> ColdStarter:
    return ColdStarter(fleet, None, RouterMetrics(10), lambda: 1.0)  # type: ignore[arg-type]


def _hrw(adapter: str, records: dict[str, WorkerRecord]) -> list[str]:
    return [w.id for w in rank_workers(adapter, [r.to_worker() for r in records.values()])]


def test_ranking_follows_membership_health_and_the_catalog() -> None:
    fleet = Fleet()
    records = _records(4)
    fleet.set_membership(records)
    fleet.catalog = {"a": AdapterRecord(name="a", source="/m/a", base_model="base", rank=8)}
    starter = _starter(fleet)
    assert [v.id for v in starter.ranked("a")] == _hrw("a", records)

    grown = {**records, **{k: v for k, v in _records(8).items() if k not in records}}
    fleet.set_membership(grown)
    assert [v.id for v in starter.ranked("a")] == _hrw("a", grown), "a joined worker is ranked"

    down = _hrw("a", grown)[0]
    fleet.workers[down].healthy = False
    assert down not in [v.id for v in starter.ranked("a")], "a worker marked down is skipped"
    fleet.workers[down].healthy = True

    small = {**grown, "w7": WorkerRecord(id="w7", url="http://127.0.0.1:9007", base_models=("base",),
                                         max_lora_rank=8)}
    fleet.set_membership(small)
    assert "w7" in [v.id for v in starter.ranked("a")]
    fleet.catalog = {"a": AdapterRecord(name="a", source="/m/a", base_model="base", rank=16)}
    assert "w7" not in [v.id for v in starter.ranked("a")], "a rank the worker cannot take excludes it"
