"""The portbroker client: sessions, leased sockets and what the daemon reports."""

import builtins
import ctypes
import enum
import os
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Optional

from . import _native

_lib = _native.load()


class ErrorCode(enum.IntEnum):
    """portbroker's stable error codes (the C ABI returns them negated)."""
    BAD_REQUEST = 1
    UNSUPPORTED_VERSION = 2
    UNKNOWN_REQUEST = 3
    PERMISSION_DENIED = 4
    CONFLICT = 5
    IN_USE_OUTSIDE = 6
    NOT_FOUND = 7
    LIMIT_EXCEEDED = 8
    RESOURCE_EXHAUSTED = 9
    NO_FREE_PORT = 10
    ADDRESS_UNAVAILABLE = 11
    INVALID_OPTION = 12
    CONNECTION_FAILED = 13
    PROTOCOL_ERROR = 14
    INTERNAL = 15


class PortbrokerError(Exception):
    """A refusal or failure: `code` (an ErrorCode) and `message` (the daemon's own words, e.g.
    naming the holder of a conflicting lease)."""

    def __init__(self, code, message):
        try:
            code = ErrorCode(code)
        except ValueError:
            pass
        self.code = code
        self.message = message or _lib.portbroker_strerror(-int(code)).decode()
        super().__init__(self.message)

    def __repr__(self):
        return f"PortbrokerError({self.code!r}, {self.message!r})"


PROTOCOLS = ("tcp", "udp")
MODES = ("exclusive", "shared", "reuseport")


@dataclass(frozen=True)
class Lease:
    id: int
    name: str
    protocol: str
    address: str
    port: int
    mode: str
    pid: int
    uid: int
    gid: int
    comm: str
    cgroup: str
    session: int
    created_at_ms: int
    state: str  # "active", or "lingering"
    linger_seconds: int
    linger_until_ms: int
    token: str  # only on a lease this client acquired with linger=
    # Restored after a daemon crash without the broker's copy of its socket: it cannot linger
    # or take new shared members until it ends (`portbroker list`: "active (no broker copy)").
    no_copy: bool


@dataclass(frozen=True)
class Status:
    version: str
    pid: int
    started_at_ms: int
    sessions: int
    leases: int
    pool_low: int
    pool_high: int
    open_fds: int
    socket_path: str


@dataclass(frozen=True)
class OutsideHolder:
    protocol: str
    address: str
    port: int
    state: str
    pid: int  # 0: no process found
    uid: int
    comm: str


@dataclass(frozen=True)
class Reservation:
    name: str
    target: str
    tcp: bool
    udp: bool
    address: Optional[str]  # None: any address
    port_first: int
    port_last: int
    hold: bool
    origin: str
    principals: str


@dataclass(frozen=True)
class WhoReport:
    protocol: str
    port: int
    leases: list
    outside: list
    reservations: list
    pools: list
    in_ephemeral_range: bool
    guarded: bool
    held: bool


@dataclass(frozen=True)
class Event:
    seq: int
    time_ms: int
    # acquired, reclaimed, released, revoked, holder-exited, lingering, expired, refused,
    # reservation-added, reservation-removed, reservation-held, hold-failed, policy-reloaded,
    # daemon-started; and lost (this subscriber missed `count` events).
    kind: str
    lease: int
    name: str
    endpoint: str
    port: int
    mode: str
    pid: int
    uid: int
    comm: str
    code: int  # refused, hold-failed: an ErrorCode
    reason: str
    conflicts_with: str  # refused: the holder of what it collided with
    count: int  # daemon-started: leases restored; lost: events not delivered


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str


def _lease(ptr):
    f = _native.read(_lib, "lease", ptr)
    f["protocol"] = PROTOCOLS[f["protocol"]]
    f["mode"] = MODES[f["mode"]]
    f["no_copy"] = bool(f["no_copy"])
    return Lease(**f)


def _leases(list_ptr):
    n = _lib.portbroker_lease_list_count(list_ptr)
    return [_lease(_lib.portbroker_lease_list_get(list_ptr, i)) for i in range(n)]


def _reservations(list_ptr):
    out = []
    for i in range(_lib.portbroker_reservation_list_count(list_ptr)):
        f = _native.read(_lib, "reservation", _lib.portbroker_reservation_list_get(list_ptr, i))
        for flag in ("tcp", "udp", "hold"):
            f[flag] = bool(f[flag])
        out.append(Reservation(**f))
    return out


def _who(w):
    outside = []
    for i in range(_lib.portbroker_who_outside_count(w)):
        f = _native.read(_lib, "outside", _lib.portbroker_who_outside_get(w, i))
        f["protocol"] = PROTOCOLS[f["protocol"]]
        outside.append(OutsideHolder(**f))
    return WhoReport(
        protocol=PROTOCOLS[_lib.portbroker_who_protocol(w)],
        port=_lib.portbroker_who_port(w),
        leases=_leases(_lib.portbroker_who_leases(w)),
        outside=outside,
        reservations=_reservations(_lib.portbroker_who_reservations(w)),
        pools=[_lib.portbroker_who_pool_get(w, i).decode()
               for i in range(_lib.portbroker_who_pool_count(w))],
        in_ephemeral_range=bool(_lib.portbroker_who_in_ephemeral_range(w)),
        guarded=bool(_lib.portbroker_who_guarded(w)),
        held=bool(_lib.portbroker_who_held(w)),
    )


def _problems(p):
    return [Problem(_lib.portbroker_problem_kind(p, i).decode(),
                    _lib.portbroker_problem_message(p, i).decode())
            for i in range(_lib.portbroker_problem_list_count(p))]


class LeasedSocket(socket.socket):
    """A socket.socket the daemon bound and listens on for us, with its `lease`. Closing it
    (or leaving its `with` block) releases the lease; so does the session's end (the Client's
    close, or the process's exit)."""

    def __init__(self, fd, lease, client):
        super().__init__(fileno=fd)
        self.lease = lease
        self._client = client

    def release(self):
        """Releases the lease now (once) and closes the socket."""
        self.close()

    def close(self):
        client, self._client = self.__dict__.get("_client"), None
        try:
            if client is not None and self.fileno() >= 0:
                client._release_quietly(self.lease.id)
        finally:
            super().close()


class LeaseGroup(builtins.list):
    """The sockets of one acquire_all, in the order asked; a context manager closing (and so
    releasing) them all."""

    def close(self):
        for sock in self:
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _OwnsHandle:
    """Closes its C handle once (`_close_fn` names the C function): on close(), on leaving a
    `with` block, or when collected."""

    _close_fn = ""

    def close(self):
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                getattr(_lib, self._close_fn)(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None and _lib is not None:
            self._handle = None
            getattr(_lib, self._close_fn)(handle)


class EventStream(_OwnsHandle):
    """The daemon's events as they happen, on a connection of its own: iterate over it (the
    iteration raises PortbrokerError when the daemon ends the stream), or call next(timeout).
    A context manager; fileno() is for selectors."""

    _close_fn = "portbroker_event_stream_close"

    def __init__(self, handle):
        self._handle = handle
        self._lock = threading.Lock()

    def next(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to `timeout` seconds (None: for ever); None when the
        time ran out first."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        out = ctypes.c_void_p()
        with self._lock:
            if self._handle is None:
                raise PortbrokerError(ErrorCode.CONNECTION_FAILED, "the event stream is closed")
            rc = _lib.portbroker_event_stream_next(self._handle, ms, ctypes.byref(out))
            if rc < 0:
                raise PortbrokerError(
                    -rc, _lib.portbroker_event_stream_last_error(self._handle).decode())
        if not out.value:
            return None
        try:
            f = _native.read(_lib, "event", out)
            try:
                f["code"] = ErrorCode(f["code"])
            except ValueError:
                pass
            return Event(**f)
        finally:
            _lib.portbroker_event_free(out)

    def __iter__(self):
        return self

    def __next__(self) -> Event:
        return self.next()

    def fileno(self) -> int:
        return _lib.portbroker_event_stream_fd(self._handle) if self._handle is not None else -1

    @property
    def subscribed_at(self) -> int:
        """The newest event's seq when the subscription took effect."""
        return _lib.portbroker_event_stream_subscribed_at(self._handle)

    @property
    def last_seq(self) -> int:
        """The seq of the last event returned (0 before any): `since` for a reconnect."""
        return _lib.portbroker_event_stream_last_seq(self._handle)


_live_clients = weakref.WeakSet()


class Client(_OwnsHandle):
    """One session with portbrokerd: its leases last until they are released or the session
    ends (close(), the end of a `with` block, or the process's exit). Thread-safe (requests are
    serialized). A Client belongs to the process that made it: in a forked child it is closed
    (the parent's session and leases are untouched) and cannot be used."""

    _close_fn = "portbroker_close"

    def __init__(self, socket_path: Optional[str] = None):
        handle = ctypes.c_void_p()
        path = os.fsencode(socket_path) if socket_path is not None else None
        rc = _lib.portbroker_connect(path, ctypes.byref(handle))
        if rc < 0:
            raise PortbrokerError(-rc, _lib.portbroker_last_error(None).decode())
        self._handle = handle
        self._lock = threading.Lock()
        self._forked = False
        _live_clients.add(self)

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, fn, *args):
        """Calls portbroker_`fn`(handle, *args), raising PortbrokerError on failure. The caller
        holds the lock."""
        if self._handle is None:
            if self._forked:
                raise PortbrokerError(ErrorCode.CONNECTION_FAILED,
                                      "this Client belongs to the parent process (fork)")
            raise PortbrokerError(ErrorCode.CONNECTION_FAILED, "the Client is closed")
        rc = getattr(_lib, "portbroker_" + fn)(self._handle, *args)
        if rc < 0:
            raise PortbrokerError(-rc, _lib.portbroker_last_error(self._handle).decode())

    def _fetch(self, fn, convert, free, *args):
        """A request whose result is a C object: converted to Python, then freed."""
        out = ctypes.c_void_p()
        with self._lock:
            self._call(fn, *args, ctypes.byref(out))
        try:
            return convert(out)
        finally:
            getattr(_lib, "portbroker_" + free)(out)

    def _release_quietly(self, lease_id):
        # Closing a socket must not raise because the daemon already ended its lease (revoked,
        # or the session is gone); the lease is over either way.
        try:
            self.release(lease_id)
        except PortbrokerError:
            pass

    def _after_fork_in_child(self):
        handle, self._handle = self._handle, None
        self._forked = True
        self._lock = threading.Lock()
        if handle is not None:
            _lib.portbroker_close(handle)  # the child's copy of the connection only

    # -- the session -----------------------------------------------------------------------

    def close(self):
        """Ends the session: every lease it still holds ends (or lingers, if asked)."""
        super().close()

    def session_fd(self) -> int:
        """The connection's fd (still the Client's): the session lives while it is open in any
        process, e.g. a child exec'd with it in pass_fds."""
        fd = ctypes.c_int(-1)
        with self._lock:
            self._call("session_fd", ctypes.byref(fd))
        return fd.value

    def detach_session_fd(self) -> int:
        """Hands the connection's fd to the caller (as `portbroker exec` does before exec): the
        session lasts as long as that fd is open; the Client can make no more requests."""
        fd = ctypes.c_int(-1)
        with self._lock:
            self._call("detach_session_fd", ctypes.byref(fd))
        return fd.value

    # -- leases ----------------------------------------------------------------------------

    def acquire(self, spec: str) -> LeasedSocket:
        """One socket, `[NAME=]PROTO:ADDRESS:PORT[,OPTION...]`; a context manager that releases
        the lease on exit."""
        return self.acquire_all([spec])[0]

    def acquire_all(self, specs: Iterable[str]) -> LeaseGroup:
        """Several sockets, all or nothing."""
        texts = [s.encode() for s in specs]
        n = len(texts)
        array = (ctypes.c_char_p * max(n, 1))(*texts)
        fds = (ctypes.c_int * max(n, 1))()
        leases = ctypes.c_void_p()
        with self._lock:
            self._call("acquire_all", array, n, fds, ctypes.byref(leases))
        group = LeaseGroup()
        try:
            infos = _leases(leases)
            for i in range(n):
                group.append(LeasedSocket(fds[i], infos[i], self))
        except BaseException:
            # Nothing half-granted stays behind: wrapped sockets release themselves, the rest
            # are closed and released here.
            group.close()
            for i in range(len(group), n):
                os.close(fds[i])
                self._release_quietly(_lib.portbroker_lease_id(
                    _lib.portbroker_lease_list_get(leases, i)))
            raise
        finally:
            _lib.portbroker_lease_list_free(leases)
        return group

    def release(self, lease_id: int) -> None:
        """Releases a lease (the holder's own uid, or any as root)."""
        with self._lock:
            self._call("release", ctypes.c_uint64(lease_id))

    def list(self) -> "list[Lease]":
        """Every lease the daemon holds."""
        return self._fetch("list", _leases, "lease_list_free")

    def status(self) -> Status:
        return self._fetch("status", lambda s: Status(**_native.read(_lib, "status", s)),
                           "status_info_free")

    def who(self, port: int, protocol: str = "tcp") -> WhoReport:
        """Everything the daemon knows about `port`: leases, outside holders, reservations."""
        if protocol not in PROTOCOLS:
            raise PortbrokerError(ErrorCode.BAD_REQUEST,
                                  f"protocol must be 'tcp' or 'udp', not {protocol!r}")
        if not 0 <= port <= 65535:
            raise PortbrokerError(ErrorCode.BAD_REQUEST, f"port {port} is not 0 to 65535")
        return self._fetch("who", _who, "who_report_free", PROTOCOLS.index(protocol), port)

    def check(self) -> "list[Problem]":
        """What an admin should know before a restart; empty when all is well."""
        return self._fetch("check", _problems, "problem_list_free")

    def reservations(self) -> "list[Reservation]":
        return self._fetch("reservations", _reservations, "reservation_list_free")

    def metrics(self) -> str:
        """The daemon's metrics, in the Prometheus text format."""
        return self._fetch("metrics", lambda p: ctypes.string_at(p).decode(), "string_free")

    def events(self, since: Optional[int] = None) -> EventStream:
        """Subscribes to the daemon's events (a connection of its own). With `since`, first
        the events after it that the daemon's ring still holds."""
        out = ctypes.c_void_p()
        start = ctypes.byref(ctypes.c_uint64(since)) if since is not None else None
        with self._lock:
            self._call("events", start, ctypes.byref(out))
        return EventStream(out)


def _after_fork_in_child():
    global _default, _default_lock
    _default_lock = threading.Lock()
    _default = None
    for client in builtins.list(_live_clients):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

_default = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process's shared session ($PORTBROKER_SOCKET, else the default path), made on first
    use; it lives until the process exits."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default
