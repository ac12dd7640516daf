"""A reload with a bad adapter entry is rejected whole and the old config kept: no half-applied state."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

from router.localfleet import base_url


def _catalog(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url + "/v1/loras", timeout=10) as r:
        return {a["name"]: a["source"] for a in json.loads(r.read())["data"]}


def test_a_reload_with_a_bad_adapter_keeps_the_old_config_whole(
        tmp_path: Path, start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
        poll_until: Callable) -> None:
    good = adapter_dirs("sup-v1")
    root = good.parent
    adapter_dirs("sup-v2")
    workers = [base_url(w) for w in start_workers(1, extra_args=("--speed", "0"))]
    config = {"security": {"allowed_path_prefixes": [str(root)]}, "base_model": "sim-base",
              "adapters": [{"name": "sup-v1", "source": str(good)}]}
    router = start_router(config, workers=workers, router_id="reloads")
    assert _catalog(router.url) == {"sup-v1": str(good)}

    bad = {**config, "adapters": [{"name": "sup-v1", "source": str(good)},
                                  {"name": "sup-v2", "source": "/etc/passwd"},
                                  {"name": "sup-v1", "source": str(root / "sup-v2")}]}
    router.config_path.write_text(json.dumps(bad))
    router.proc.signal(signal.SIGHUP)
    log = tmp_path / "reloads.log"
    poll_until(lambda: "config reload rejected" in log.read_text(), timeout_s=20, what="the reload to be judged")
    text = log.read_text()
    assert "sup-v2" in text and "the same name as adapters[0]" in text, text
    assert _catalog(router.url) == {"sup-v1": str(good)}, "nothing of the bad config applied"
