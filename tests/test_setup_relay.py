"""Setup without N copies from the control host: relays hand the wheels on (#16).

On loopback: the relay's ``serve`` and the hosts' fetch, including a relay
that hands out other bytes. On the fleet: ``murder.setup`` to eight hosts
uploads the wheels to three of them only, and every host ends with a working
agent and the relays stopped.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabmurder import pipeline, wheel_relay
from fabmurder.host.serve import make_server
from fabmurder.remote import FastConnection
from fabmurder.testing.deploykit import DeployKit, agent_processes
from fabmurder.testing.fleet import Fleet


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(b"wheel a" * 1000)
    (wheels / "secret.txt").write_bytes(b"not a wheel")
    server = make_server(str(wheels), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", wheels
    finally:
        server.shutdown()
        server.server_close()


def fetch(dest: Path, base: str, *items: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-", str(dest), base, *items],
        input=wheel_relay.FETCH, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_relay_serves_its_wheels_only_and_the_fetch_checks_every_byte(
    relay: tuple[str, Path], tmp_path: Path
) -> None:
    base, wheels = relay
    name = "a-1.0-py3-none-any.whl"
    digest = hashlib.sha256((wheels / name).read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    dest.mkdir()
    done = fetch(dest, base, name, digest)
    assert done.returncode == 0, done.stderr
    assert (dest / name).read_bytes() == (wheels / name).read_bytes()
    assert (dest / name).stat().st_mode & 0o777 == 0o600
    for path in ("/secret.txt", "/", "/../wheels/" + name, "/x/" + name):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + path, timeout=5)
        assert caught.value.code == 404, path
    # a relay that hands out other bytes: refused, nothing left behind
    other = tmp_path / "other"
    other.mkdir()
    bad = fetch(other, base, name, "0" * 64)
    assert bad.returncode != 0
    assert f"{name} from {base} has SHA-256 {digest}, not {'0' * 64}" in bad.stderr
    assert list(other.iterdir()) == []
    assert fetch(other, base, "../evil", digest).returncode != 0


@pytest.mark.fleet
def test_setup_to_eight_hosts_uploads_the_wheels_to_three_and_relays_them_to_the_rest(
    fleet: Fleet, wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = DeployKit(fleet, str(wheels))
    remote = "/srv/fabmurder/relay-agent"
    puts: list[str] = []
    real_put = FastConnection.put

    def counted(self: FastConnection, local: str, remote: str = "", **kwargs: Any) -> Any:
        puts.append(f"{self.host} {remote}")  # a spy: the real upload still happens
        return real_put(self, local, remote=remote, **kwargs)

    monkeypatch.setattr(FastConnection, "put", counted)
    hosts = range(2, 9)  # and host 1, the tracker and seeder: eight
    murder = {**kit.murder(peers=hosts), "remote_path": remote}
    count = len(list(wheels.glob("*.whl")))
    try:
        result = pipeline.setup(kit.context(murder))
        assert sorted(result.succeeded.values()) == ["installed"] * 8
        uploaded = [p for p in puts if f"{remote}/wheels/" in p]
        assert len(uploaded) == wheel_relay.RELAYS * count, uploaded
        assert len({p.split()[0] for p in uploaded}) == wheel_relay.RELAYS < 8  # not all
        for index in range(1, 9):
            assert not [p for p in agent_processes(fleet, index) if " serve " in p], index
        again = pipeline.setup(kit.context(murder))
        assert sorted(again.succeeded.values()) == ["up to date"] * 8
    finally:
        for index in range(1, 9):
            fleet.run_in(index, ["rm", "-rf", remote])
