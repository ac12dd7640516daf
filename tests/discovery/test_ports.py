"""Ports for processes started side by side: every one its own, and etcd's even when taken meanwhile."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from discovery.embedded import EmbeddedEtcd, EtcdStartFailed
from discovery.ports import free_ports


def test_ports_asked_for_together_are_distinct_and_bindable() -> None:
    ports = free_ports(256)
    assert len(set(ports)) == 256
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[0]))


def test_an_etcd_whose_chosen_port_was_taken_meanwhile_starts_on_another(tmp_path: Path) -> None:
    """CI once lost a test to this: the port chosen for a test's etcd was bound by another process before etcd
    bound it, and the fixture failed instead of choosing again."""
    etcd = EmbeddedEtcd(tmp_path / "data")
    chosen = etcd.client_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taker:
        taker.bind(("127.0.0.1", chosen))
        taker.listen()
        try:
            etcd.start()
            assert etcd.client_port != chosen
            with urllib.request.urlopen(etcd.endpoint + "/health", timeout=5) as r:
                assert b'"health":"true"' in r.read()
        finally:
            etcd.kill()


def test_an_etcd_port_the_operator_named_is_never_swapped(tmp_path: Path) -> None:
    """Clients were told that port: a taken one is an error that names it, not a silent move."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        port = taker.getsockname()[1]
        etcd = EmbeddedEtcd(tmp_path / "data", client_port=port)
        with pytest.raises(EtcdStartFailed, match=f"port {port} is in use"):
            etcd.start()


def test_an_etcd_that_exits_on_a_port_taken_after_the_check_starts_again_on_fresh_ones(tmp_path: Path) -> None:
    """The check before etcd starts cannot close the race; etcd's own bind failure is the last word. Here etcd
    is made to collide with itself (peer port = client port), which it reports as any other taker would."""
    etcd = EmbeddedEtcd(tmp_path / "data")
    etcd.peer_port = etcd.client_port
    try:
        etcd.start()
        assert etcd.peer_port != etcd.client_port
    finally:
        etcd.kill()
    assert "address already in use" in (tmp_path / "lora-router-etcd.log").read_text()
