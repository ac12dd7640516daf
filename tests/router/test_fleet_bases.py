"""The base models the fleet serves: read on every request, so kept with the membership."""

from __future__ import annotations

from discovery.records import WorkerRecord
from router.fleet import Fleet


def _record(wid: str, *bases: str) -> WorkerRecord:
    return WorkerRecord(id=wid, url=f"http://127.0.0.1:9{len(wid)}", base_models=bases)


def test_bases_follow_the_membership_without_a_set_built_per_request() -> None:
    fleet = Fleet()
    assert fleet.bases() == set()
    fleet.set_membership({"w1": _record("w1", "b1"), "w2": _record("w2", "b1", "b2")})
    assert fleet.bases() == {"b1", "b2"}
    assert fleet.bases() is fleet.bases(), "the request path must not pay O(fleet) per call"
    fleet.set_membership({"w2": _record("w2", "b2")})
    assert fleet.bases() == {"b2"}
