"""The fleet's own ports: the Redis port it picks is none of its nodes' or nginx's."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest

from bgsvc.cluster import redisd


def test_the_redis_port_is_never_one_already_chosen_for_the_fleet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel hands a just-closed port out again: the nodes' ports are chosen (and
    # their probing sockets closed) before anything listens on them.
    handed = iter([40001, 40002, 40001, 40003])

    class Kernel(socket.socket):
        def getsockname(self) -> Any:
            return ("127.0.0.1", next(handed))

    monkeypatch.setattr(redisd, "socket", SimpleNamespace(socket=Kernel))
    assert redisd.free_port("127.0.0.1", taken={40001, 40002}) == 40003
