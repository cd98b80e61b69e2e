"""The Python package against a real portbrokerd. tests/integration/python_test.cc runs these in a
private network namespace with $PORTBROKER_SOCKET and $PORTBROKER_LIBRARY set, the daemon's
pool being 24100-24109, after installing the package with pip (so `portbroker` is the installed
copy)."""

import asyncio
import os
import socket
import subprocess
import sys

import pytest

import portbroker
from portbroker import Client, ErrorCode, PortbrokerError


def fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_leak():
    # The shared session opens once per process; open it before counting.
    portbroker.default_client()
    before = fd_count()
    yield
    assert fd_count() == before


def leased_ports():
    return {lease.port for lease in portbroker.list()}


def test_the_installed_package_is_the_one_tested():
    expected = os.environ.get("PORTBROKER_EXPECT_PACKAGE_UNDER")
    if expected:
        assert portbroker.__file__.startswith(expected)
    assert portbroker.__version__


def test_acquire_gives_a_listening_socket_and_exiting_the_block_ends_the_lease():
    with portbroker.acquire("web=tcp:127.0.0.1:18800") as sock:
        assert isinstance(sock, socket.socket)
        assert sock.getsockname() == ("127.0.0.1", 18800)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        lease = sock.lease
        assert lease.port == 18800 and lease.name == "web" and lease.protocol == "tcp"
        listed = [l for l in portbroker.list() if l.id == lease.id]
        assert len(listed) == 1
        assert listed[0].pid == os.getpid() and listed[0].state == "active"

        with socket.create_connection(("127.0.0.1", 18800)) as out:
            conn, _ = sock.accept()
            with conn:
                out.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    assert sock.fileno() == -1
    assert 18800 not in leased_ports()


def test_a_conflict_raises_with_the_code_and_the_daemons_message():
    with portbroker.acquire("tcp:127.0.0.1:18801"):
        with Client() as other:
            with pytest.raises(PortbrokerError) as refused:
                other.acquire("tcp:127.0.0.1:18801")
    err = refused.value
    assert err.code == ErrorCode.CONFLICT
    assert f"pid {os.getpid()}" in err.message
    assert str(err) == err.message
    assert 18801 not in leased_ports()


def test_bad_input_raises_and_changes_nothing():
    before = portbroker.list()
    with pytest.raises(PortbrokerError) as bad:
        portbroker.acquire("tcp:127.0.0.1:nonsense")
    assert bad.value.code == ErrorCode.BAD_REQUEST and "nonsense" in bad.value.message
    with pytest.raises(PortbrokerError) as bad:
        portbroker.acquire_all([])
    assert bad.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(PortbrokerError) as bad:
        portbroker.who(80, "sctp")
    assert bad.value.code == ErrorCode.BAD_REQUEST
    with pytest.raises(PortbrokerError) as missing:
        portbroker.release(999999)
    assert missing.value.code == ErrorCode.NOT_FOUND
    assert portbroker.list() == before


def test_no_daemon_raises_connection_failed():
    with pytest.raises(PortbrokerError) as failed:
        Client("/nonexistent/portbroker.sock")
    assert failed.value.code == ErrorCode.CONNECTION_FAILED
    assert "/nonexistent/portbroker.sock" in failed.value.message


def test_acquire_all_is_all_or_nothing_and_releases_together():
    with portbroker.acquire("tcp:127.0.0.1:18802"):
        with Client() as other:
            with pytest.raises(PortbrokerError) as refused:
                other.acquire_all(["tcp:127.0.0.1:18803", "tcp:127.0.0.1:18802"])
            assert refused.value.code == ErrorCode.CONFLICT
    assert not {18802, 18803} & leased_ports()

    with portbroker.acquire_all(["a=tcp:127.0.0.1:0", "b=udp:127.0.0.1:0"]) as (a, b):
        assert a.lease.name == "a" and b.lease.name == "b"
        assert 24100 <= a.lease.port <= 24109 and b.lease.protocol == "udp"
        assert b.type == socket.SOCK_DGRAM
        ids = {a.lease.id, b.lease.id}
        assert ids <= {l.id for l in portbroker.list()}
    assert not ids & {l.id for l in portbroker.list()}


def test_status_who_and_check():
    status = portbroker.status()
    assert status.version == portbroker.__version__
    assert status.pid > 0 and status.sessions >= 1
    assert (status.pool_low, status.pool_high) == (24100, 24109)
    assert status.socket_path == os.environ["PORTBROKER_SOCKET"]

    outside = socket.socket()
    outside.bind(("127.0.0.1", 18804))
    outside.listen()
    with outside, portbroker.acquire("tcp:127.0.0.1:18805,shared") as sock:
        report = portbroker.who(18805)
        assert [l.id for l in report.leases] == [sock.lease.id]
        assert report.leases[0].mode == "shared"
        report = portbroker.who(18804)
        assert report.leases == []
        assert [(o.pid, o.state, o.port) for o in report.outside] == [
            (os.getpid(), "LISTEN", 18804)]
    assert portbroker.who(24105, "udp").pools == ["default"]
    assert portbroker.check() == []
    assert portbroker.reservations() == []


def wait_for(predicate):
    for _ in range(2000):  # daemon round trips, never time
        if predicate():
            return True
    return False


def test_a_lingering_lease_has_a_token_and_can_be_taken_back():
    client = Client()
    sock = client.acquire("tcp:127.0.0.1:18806,linger=30")
    token = sock.lease.token
    assert len(token) >= 16
    fd = sock.detach()  # keeps the lease: only the session's end may leave it lingering
    client.close()
    assert wait_for(lambda: [l.state for l in portbroker.list() if l.port == 18806]
                    == ["lingering"])
    os.close(fd)
    with portbroker.acquire(f"tcp:127.0.0.1:18806,linger=30,token={token}") as back:
        assert back.getsockname() == ("127.0.0.1", 18806)
        assert [l.state for l in portbroker.list() if l.port == 18806] == ["active"]
    assert 18806 not in leased_ports()


def test_asyncio_serves_on_an_acquired_socket():
    """What aiohttp's web.run_app(app, sock=sock) and uvicorn's fd= do underneath."""

    async def main():
        with portbroker.acquire("tcp:127.0.0.1:0") as sock:
            async def echo(reader, writer):
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(echo, sock=sock)
            async with server:
                reader, writer = await asyncio.open_connection("127.0.0.1", sock.lease.port)
                writer.write(b"hello\n")
                assert await reader.readline() == b"hello\n"
                writer.close()
                await writer.wait_closed()
            return sock.lease.port

    port = asyncio.run(main())
    assert port not in leased_ports()


def test_a_forked_worker_closing_its_copy_keeps_the_parents_lease():
    """gunicorn-style pre-fork: workers inherit the listening socket; a worker's exit or close
    must not release the master's lease."""
    with portbroker.acquire("tcp:127.0.0.1:18807") as sock:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                sock.close()  # the child's copy: no release
                try:
                    portbroker.default_client()  # a new session of the child's own
                except PortbrokerError:
                    code = 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert 18807 in leased_ports()
    assert 18807 not in leased_ports()


def test_a_lease_ends_when_its_process_exits():
    code = ("import portbroker, sys; s = portbroker.acquire('tcp:127.0.0.1:18808'); "
            "print(s.lease.port, flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "18808"
    assert [l.pid for l in portbroker.list() if l.port == 18808] == [child.pid]
    child.stdin.close()
    child.stdout.close()
    assert child.wait() == 0
    assert wait_for(lambda: 18808 not in leased_ports())


def test_events_as_they_happen_and_since_a_seq():
    with portbroker.events() as stream:
        assert stream.next(timeout=0) is None  # nothing new yet
        with portbroker.acquire("tcp:127.0.0.1:18809") as sock:
            lease_id = sock.lease.id
        acquired = stream.next()
        assert (acquired.kind, acquired.port, acquired.lease) == ("acquired", 18809, lease_id)
        assert acquired.pid == os.getpid() and acquired.seq == stream.subscribed_at + 1
        released = next(iter(stream))
        assert (released.kind, released.lease) == ("released", lease_id)
        assert stream.last_seq == released.seq

    # A reconnect with since= catches up from the daemon's ring, refusals included.
    with portbroker.acquire("tcp:127.0.0.1:18809"):
        with Client() as other, pytest.raises(PortbrokerError):
            other.acquire("tcp:127.0.0.1:18809")
    with portbroker.events(since=released.seq) as stream:
        kinds = []
        while stream.last_seq < stream.subscribed_at:  # the replay ends at the subscription
            event = stream.next()
            kinds.append(event.kind)
            if event.kind == "refused":
                assert event.code == ErrorCode.CONFLICT
                assert f"pid {os.getpid()}" in event.conflicts_with
        assert kinds == ["acquired", "refused", "released"]


def test_metrics_in_the_prometheus_text_format():
    with portbroker.acquire("tcp:127.0.0.1:18812"):
        text = portbroker.metrics()
    assert "# TYPE portbroker_" in text
