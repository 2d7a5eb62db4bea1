"""tests.helpers.Link, which the outage tests trust to cut a route: after `cut` nothing gets through."""

from __future__ import annotations

import socket

import pytest
from helpers import Link


def test_a_cut_link_refuses_the_next_connection_and_a_mended_one_relays_again():
    with socket.create_server(("127.0.0.1", 0)) as server:
        link = Link(f"http://127.0.0.1:{server.getsockname()[1]}")
        link.cut()  # close() alone left accept() waiting: it took one more connection and relayed it
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", link.port), timeout=5).close()
        link.mend()
        with socket.create_connection(("127.0.0.1", link.port), timeout=5) as client:
            client.sendall(b"ping")
            relayed, _ = server.accept()
            with relayed:
                assert relayed.recv(4) == b"ping"
        link.cut()
