"""Ports for processes started side by side: every one its own."""

from __future__ import annotations

import socket

from discovery.ports import free_ports


def test_ports_asked_for_together_are_distinct_and_bindable() -> None:
    ports = free_ports(256)
    assert len(set(ports)) == 256
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[0]))
