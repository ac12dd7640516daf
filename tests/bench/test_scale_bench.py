"""`lora-bench scale` end to end at a small size: real etcd, two real routers, workers joining and leaving."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_join_or_leave_writes_a_few_sets_and_every_router_applies_it(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    bench = subprocess.Popen([sys.executable, "-m", "bench", "scale", "--workers", "20", "--adapters", "400",
                              "--routers", "2", "--changes", "2", "--settle-s", "0", "--json", str(out)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = bench.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        bench.send_signal(signal.SIGINT)  # its own cleanup stops the routers and etcd it started
        output, _ = bench.communicate(timeout=20)
    assert bench.returncode == 0, output
    figures = json.loads(out.read_text())
    assert figures["first_placement"]["sets"] == 400
    for change in figures["changes"]:
        assert 0 < change["sets_written"] < 100, "a change writes the sets it moved, not the placement"
        assert change["bytes_written"] < figures["first_placement"]["bytes"] / 10
        assert len(change["applied_ms"]) == 2 * min(3, change["sets_written"]), "every router applied it"
    assert all(mb > 0 for mb in figures["rss_mb_peak"])
