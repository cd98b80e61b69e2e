"""portbroker: ready, bound, listening sockets from portbrokerd.

    import portbroker

    with portbroker.acquire("http=tcp:0.0.0.0:8080") as sock:  # a listening socket.socket
        conn, peer = sock.accept()
    # the lease is released here

The module-level functions use one shared session per process (default_client(), found
through $PORTBROKER_SOCKET or the default path); a Client is a session of its own. Failures
raise PortbrokerError with the code and the daemon's message. The C library is found through
$PORTBROKER_LIBRARY, else the system's libportbroker.so.
"""

from ._client import (
    Client,
    ErrorCode,
    Event,
    EventStream,
    Lease,
    LeasedSocket,
    LeaseGroup,
    OutsideHolder,
    PortbrokerError,
    Problem,
    Reservation,
    Status,
    WhoReport,
    _lib,
    default_client,
)

__version__ = _lib.portbroker_version().decode()

__all__ = [
    "Client", "ErrorCode", "Event", "EventStream", "Lease", "LeasedSocket", "LeaseGroup",
    "OutsideHolder", "PortbrokerError", "Problem", "Reservation", "Status", "WhoReport",
    "acquire", "acquire_all", "check", "default_client", "events", "list", "metrics", "release",
    "reservations", "status", "who",
]


def acquire(spec: str) -> LeasedSocket:
    """One socket (`[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`), a socket.socket that is also a
    context manager: leaving the block (or close()) releases the lease."""
    return default_client().acquire(spec)


def acquire_all(specs) -> LeaseGroup:
    """Several sockets, all or nothing: a list of sockets, and a context manager for them all."""
    return default_client().acquire_all(specs)


def release(lease_id: int) -> None:
    default_client().release(lease_id)


def list():  # noqa: A001 (mirrors `portbroker list`)
    """Every lease the daemon holds, as Lease values."""
    return default_client().list()


def status() -> Status:
    return default_client().status()


def who(port: int, protocol: str = "tcp") -> WhoReport:
    return default_client().who(port, protocol)


def check():
    return default_client().check()


def reservations():
    return default_client().reservations()


def metrics() -> str:
    """The daemon's metrics, in the Prometheus text format."""
    return default_client().metrics()


def events(since=None) -> EventStream:
    """The daemon's events as they happen (see EventStream); with `since`, first those after
    it that the daemon's ring still holds."""
    return default_client().events(since)
