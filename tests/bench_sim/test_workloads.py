"""Workload generators and trace replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import workloads
from bench.cli import main
from bench.workloads import Lengths, TraceError, read_trace


def _zipf(seed: int) -> workloads.Requests:
    return workloads.concat(workloads.zipf(np.random.default_rng(seed), 20000, 100, 1.1, 50.0, Lengths()))


def test_generators_are_seeded_and_sorted() -> None:
    a, b, c = _zipf(1), _zipf(1), _zipf(2)
    assert len(a) == 20000
    for field in ("time", "adapter", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.adapter, c.adapter)
    assert np.all(np.diff(a.time) >= 0)
    assert a.adapter.min() >= 0 and a.adapter.max() < 100
    assert a.output_tokens.min() >= 1
    assert len(a) / a.time[-1] == pytest.approx(50.0, rel=0.05)
    counts = np.bincount(a.adapter, minlength=100)
    assert counts[0] > counts[9] > counts[99]
    assert counts[0] / counts[9] == pytest.approx(10 ** 1.1, rel=0.2)


def test_flash_crowd_hits_the_coldest_adapter_only_in_its_window() -> None:
    r = workloads.concat(workloads.flash_crowd(np.random.default_rng(0), 20000, 200, 1.1, 40.0, start_s=100.0,
                                               duration_s=100.0, crowd_rps=40.0, lengths=Lengths()))
    inside = (r.time >= 100.0) & (r.time < 200.0)
    cold = r.adapter == 199
    assert cold[inside].mean() == pytest.approx(0.5, abs=0.05)
    assert cold[~inside].mean() < 0.01


def test_popularity_shift_moves_the_hot_adapter() -> None:
    r = workloads.concat(workloads.popularity_shift(np.random.default_rng(0), 10000, 100, 1.1, 50.0,
                                                    period_s=50.0, shift=10, lengths=Lengths()))
    first = np.bincount(r.adapter[r.time < 50.0], minlength=100).argmax()
    second = np.bincount(r.adapter[(r.time >= 50.0) & (r.time < 100.0)], minlength=100).argmax()
    assert (first, second) == (0, 10)


def test_diurnal_and_mmpp_vary_the_rate() -> None:
    d = workloads.concat(workloads.diurnal(np.random.default_rng(0), 20000, 10, 1.0, 40.0, period_s=200.0,
                                           swing=0.8, lengths=Lengths()))
    trough = ((d.time % 200.0) < 20.0).sum()
    peak = (((d.time % 200.0) >= 90.0) & ((d.time % 200.0) < 110.0)).sum()
    assert peak > 4 * trough
    m = workloads.concat(workloads.mmpp(np.random.default_rng(0), 20000, 10, 1.0, 10.0, 100.0, mean_low_s=20.0,
                                        mean_high_s=5.0, lengths=Lengths()))
    per_second = np.bincount(m.time.astype(np.int64))
    assert per_second.max() > 60 and np.percentile(per_second, 25) < 25


def test_trace_csv_and_jsonl(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("time,adapter,prompt_tokens,output_tokens\n12.5,b,10,3\n10,a,5,1\n11,b,7,2\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"time": t, "adapter": a, "prompt_tokens": p, "output_tokens": o})
                               for t, a, p, o in [(12.5, "b", 10, 3), (10, "a", 5, 1), (11, "b", 7, 2)]) + "\n")
    for path in (csv_path, jsonl):
        requests, adapter_names = read_trace(path)
        assert adapter_names == ["b", "a"]
        assert requests.time.tolist() == [0.0, 1.0, 2.5]
        assert requests.adapter.tolist() == [1, 0, 0]
        assert requests.prompt_tokens.tolist() == [5, 7, 10]
        assert requests.output_tokens.tolist() == [1, 2, 3]
    out = tmp_path / "r.json"
    assert main(["sim", "--trace", str(jsonl), "--workers", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["scenario"] == "trace:t.jsonl" and doc["results"]["lora-router"]["requests"] == 3


@pytest.mark.parametrize(("text", "message"), [
    ("time,adapter,prompt_tokens\n1,a,3\n", "t.csv:2: missing field 'output_tokens'"),
    ("time,adapter,prompt_tokens,output_tokens\n1,a,x,3\n", "t.csv:2: invalid literal"),
    ("time,adapter,prompt_tokens,output_tokens\n1,a,3,0\n", "t.csv:2: need time finite"),
    ("time,adapter,prompt_tokens,output_tokens\n", "t.csv: no requests"),
])
def test_bad_traces_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_trace(path)


def test_bad_jsonl_and_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"time": 1, "adapter": "a", "prompt_tokens": 1, "output_tokens": 1}\n[1]\n')
    with pytest.raises(TraceError, match=r"t\.jsonl:2: expected an object"):
        read_trace(path)
    assert main(["sim", "--trace", str(path)]) == 2
    assert "t.jsonl:2" in capsys.readouterr().err
