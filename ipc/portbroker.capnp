# The portbroker wire protocol: one message per SOCK_SEQPACKET record.
# Append only: never renumber a field, an enumerant or a union member.
@0xf5323a483aebdeb9;

$import "/capnp/c++.capnp".namespace("portbroker::wire");

const protocolVersion :UInt32 = 1;

enum Protocol { tcp @0; udp @1; }
enum Mode { exclusive @0; shared @1; reuseport @2; }

# Mirrors portbroker::ErrorCode (client/include/portbroker/result.hpp).
enum ErrorCode {
  ok @0; badRequest @1; unsupportedVersion @2; unknownRequest @3; permissionDenied @4;
  conflict @5; inUseOutside @6; notFound @7; limitExceeded @8; resourceExhausted @9;
  noFreePort @10; addressUnavailable @11; invalidOption @12; connectionFailed @13;
  protocolError @14; internal @15;
}

struct SocketOption {
  union {
    backlog @0 :Int32;
    v6only @1 :Bool;
    reuseaddr @2 :Bool;
    freebind @3 :Bool;
    deferAccept @4 :Int32;
    fastopen @5 :Int32;
    keepalive @6 :Bool;
    rcvbuf @7 :Int32;
    sndbuf @8 :Int32;
    device @9 :Text;
  }
}

struct SocketRequest {
  name @0 :Text;
  protocol @1 :Protocol;
  address @2 :Data;   # 4 or 16 bytes, network order
  port @3 :UInt16;    # 0: any free port from a pool
  mode @4 :Mode;
  options @5 :List(SocketOption);
  linger @6 :UInt32;  # seconds kept after the session ends without a release
  token @7 :Text;     # reclaims a lingering lease of another uid
}

struct Holder {
  pid @0 :Int32;
  uid @1 :UInt32;
  gid @2 :UInt32;
  comm @3 :Text;
  cgroup @4 :Text;
}

struct LeaseInfo {
  id @0 :UInt64;
  name @1 :Text;
  protocol @2 :Protocol;
  address @3 :Data;
  port @4 :UInt16;
  mode @5 :Mode;
  holder @6 :Holder;
  session @7 :UInt64;
  createdAt @8 :Int64;   # unix time, milliseconds
  state @9 :Text;        # "active" or "lingering"
  linger @10 :UInt32;    # seconds
  lingerUntil @11 :Int64;  # unix ms while lingering, else 0
  token @12 :Text;       # only in the acquire reply, to the holder
  noCopy @13 :Bool;      # restored after a restart without the broker's copy of its socket
}

# A port reservation for a named service (`portbroker reserve`).
struct Reservation {
  name @0 :Text;
  tcp @1 :Bool;
  udp @2 :Bool;
  address @3 :Data;      # empty: any address
  portFirst @4 :UInt16;
  portLast @5 :UInt16;
  users @6 :List(Text);  # names or numeric ids
  groups @7 :List(Text);
  hold @8 :Bool;         # the daemon binds and keeps the port(s)
  origin @9 :Text;       # replies only: "FILE:LINE" or "runtime"
  principals @10 :Text;  # replies only: who may lease it, for people
  target @11 :Text;      # requests: "PROTO:ADDR:PORT[-PORT]" (PROTO tcp|udp|both, ADDR or "any")
  noListen @12 :Bool;    # with hold: TCP sockets bound but never listening (DNAT users)
}

struct Request {
  version @0 :UInt32;
  union {
    acquire @1 :List(SocketRequest);   # all-or-nothing
    release @2 :UInt64;                # lease id
    list @3 :Void;
    status @4 :Void;
    reserve @5 :Reservation;           # root only
    unreserve @6 :Text;                # root only; reservation name
    reload @7 :Void;                   # root only; same as SIGHUP
    who @8 :WhoRequest;
    check @9 :Void;
    reservations @10 :Void;
    shutdown @11 :ShutdownRequest;     # root only
    upgrade @12 :Void;                 # root only; re-execute the daemon in place
    events @13 :EventsRequest;         # the connection becomes a stream of `event` replies
    metrics @14 :Void;                 # Prometheus text exposition
  }
}

struct EventsRequest {
  replay @0 :Bool;     # also send the ring's events after `since` (`portbroker events --since`)
  since @1 :UInt64;
}

# Something that happened (`portbroker events`). Which fields are set depends on the kind.
struct Event {
  seq @0 :UInt64;          # increases by one per event the daemon publishes
  time @1 :Int64;          # unix time, milliseconds
  kind @2 :Text;           # "acquired", "released", "refused", "lost", ... (see README)
  lease @3 :UInt64;
  name @4 :Text;           # the lease's or the reservation's name
  endpoint @5 :Text;       # "tcp 127.0.0.1:8080", or a reservation's target
  mode @6 :Text;
  pid @7 :Int32;           # the lease's holder, or who asked
  uid @8 :UInt32;
  comm @9 :Text;
  code @10 :ErrorCode;     # refused, hold-failed
  reason @11 :Text;
  conflictsWith @12 :Text; # refused: the holder it conflicted with
  count @13 :UInt64;       # daemon-started: leases restored; lost: events not delivered
  port @14 :UInt16;
}

struct ShutdownRequest {
  # false: stop serving and exit, leaving every holder's socket alone (as SIGTERM does).
  # true: revoke every lease first (each listener is shut down) and remove the guard's entries.
  revokeAll @0 :Bool;
}

struct WhoRequest {
  protocol @0 :Protocol;
  port @1 :UInt16;
}

# A socket on the port held by a process outside the broker (kernel sock_diag + /proc).
struct OutsideHolder {
  protocol @0 :Protocol;
  address @1 :Data;
  port @2 :UInt16;
  state @3 :Text;     # "listen", "bound", ...
  pid @4 :Int32;      # 0 when no process could be found (e.g. another namespace)
  uid @5 :UInt32;
  comm @6 :Text;
}

struct WhoReply {
  protocol @0 :Protocol;
  port @1 :UInt16;
  leases @2 :List(LeaseInfo);
  outside @3 :List(OutsideHolder);
  reservations @4 :List(Reservation);
  pools @5 :List(Text);           # names of the pools containing the port
  inEphemeralRange @6 :Bool;      # inside net.ipv4.ip_local_port_range
  guarded @7 :Bool;               # listed in net.ipv4.ip_local_reserved_ports
  held @8 :Bool;                  # the daemon holds the port for a reservation
}

struct Problem {
  kind @0 :Text;      # "held-outside", "unprotected", "policy-lint", "lease-refused", ...
  message @1 :Text;
}

struct ReloadResult {
  source @0 :Text;               # the policy file, or "<embedded default>"
  refusedLeases @1 :List(Text);  # leases the new policy would refuse (kept, not killed)
}

struct Granted {
  lease @0 :LeaseInfo;   # carries the bound port (useful when 0 was asked)
  fdIndex @1 :UInt32;    # index into this record's SCM_RIGHTS fds
}

struct Status {
  version @0 :Text;
  pid @1 :Int32;
  startedAt @2 :Int64;       # unix time, milliseconds
  sessions @3 :UInt32;
  leases @4 :UInt32;
  poolLow @5 :UInt16;
  poolHigh @6 :UInt16;
  openFds @7 :UInt32;
  socketPath @8 :Text;
}

struct Reply {
  union {
    error :group {
      code @0 :ErrorCode;
      message @1 :Text;
    }
    acquired @2 :List(Granted);
    released @3 :Void;
    leases @4 :List(LeaseInfo);
    status @5 :Status;
    done @6 :Void;                 # reserve, unreserve
    reloaded @7 :ReloadResult;
    who @8 :WhoReply;
    problems @9 :List(Problem);    # check: empty when all is well
    reservations @10 :List(Reservation);
    event @11 :Event;              # one per record on an events connection
    metrics @12 :Text;
    subscribed @13 :UInt64;        # events: the newest sequence number when it took effect
  }
  # A reply too large for one record comes in parts, each a whole Reply of the same kind:
  # every part but the last has `more` set, and the lists of the parts append to each other
  # (who: the scalar fields are the first part's). The requester sends nothing meanwhile.
  more @14 :Bool;
}
