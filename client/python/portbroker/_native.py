"""The C ABI of libportbroker.so, declared for ctypes (see portbroker.h for each function)."""

import ctypes
import ctypes.util
import os

ABI_VERSION = 1  # the PORTBROKER_ABI_VERSION this module was written against

_p = ctypes.c_void_p
_s = ctypes.c_char_p
_i = ctypes.c_int
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_i32 = ctypes.c_int32
_u64 = ctypes.c_uint64
_i64 = ctypes.c_int64
_size = ctypes.c_size_t
_out = ctypes.POINTER(ctypes.c_void_p)
_strs = ctypes.POINTER(ctypes.c_char_p)

# name: (restype, argtypes)
_FUNCTIONS = {
    "abi_version": (ctypes.c_uint, []),
    "version": (_s, []),
    "strerror": (_s, [_i]),
    "connect": (_i, [_s, _out]),
    "close": (None, [_p]),
    "last_error": (_s, [_p]),
    "session_fd": (_i, [_p, ctypes.POINTER(_i)]),
    "detach_session_fd": (_i, [_p, ctypes.POINTER(_i)]),
    "acquire": (_i, [_p, _s, ctypes.POINTER(_i), ctypes.POINTER(_u64), ctypes.POINTER(_u16)]),
    "acquire_all": (_i, [_p, _strs, _size, ctypes.POINTER(_i), _out]),
    "release": (_i, [_p, _u64]),
    "list": (_i, [_p, _out]),
    "lease_list_count": (_size, [_p]),
    "lease_list_get": (_p, [_p, _size]),
    "lease_list_free": (None, [_p]),
    "status": (_i, [_p, _out]),
    "status_info_free": (None, [_p]),
    "who": (_i, [_p, _i, _u16, _out]),
    "who_protocol": (_i, [_p]),
    "who_port": (_u16, [_p]),
    "who_leases": (_p, [_p]),
    "who_outside_count": (_size, [_p]),
    "who_outside_get": (_p, [_p, _size]),
    "who_reservations": (_p, [_p]),
    "who_pool_count": (_size, [_p]),
    "who_pool_get": (_s, [_p, _size]),
    "who_in_ephemeral_range": (_i, [_p]),
    "who_guarded": (_i, [_p]),
    "who_held": (_i, [_p]),
    "who_report_free": (None, [_p]),
    "check": (_i, [_p, _out]),
    "problem_list_count": (_size, [_p]),
    "problem_kind": (_s, [_p, _size]),
    "problem_message": (_s, [_p, _size]),
    "problem_list_free": (None, [_p]),
    "reservations": (_i, [_p, _out]),
    "reservation_list_count": (_size, [_p]),
    "reservation_list_get": (_p, [_p, _size]),
    "reservation_list_free": (None, [_p]),
    "metrics": (_i, [_p, ctypes.POINTER(ctypes.c_void_p)]),
    "string_free": (None, [_p]),
    "events": (_i, [_p, ctypes.POINTER(_u64), _out]),
    "event_stream_next": (_i, [_p, _i, _out]),
    "event_stream_last_error": (_s, [_p]),
    "event_stream_fd": (_i, [_p]),
    "event_stream_subscribed_at": (_u64, [_p]),
    "event_stream_last_seq": (_u64, [_p]),
    "event_stream_close": (None, [_p]),
    "event_free": (None, [_p]),
}

# Accessors of one object: name: restype (the one argument is the object).
_ACCESSORS = {
    "lease": {
        "id": _u64, "name": _s, "protocol": _i, "address": _s, "port": _u16, "mode": _i,
        "pid": _i32, "uid": _u32, "gid": _u32, "comm": _s, "cgroup": _s, "session": _u64,
        "created_at_ms": _i64, "state": _s, "linger_seconds": _u32, "linger_until_ms": _i64,
        "token": _s, "no_copy": _i,
    },
    "status": {
        "version": _s, "pid": _i32, "started_at_ms": _i64, "sessions": _u32, "leases": _u32,
        "pool_low": _u16, "pool_high": _u16, "open_fds": _u32, "socket_path": _s,
    },
    "outside": {
        "protocol": _i, "address": _s, "port": _u16, "state": _s, "pid": _i32, "uid": _u32,
        "comm": _s,
    },
    "event": {
        "seq": _u64, "time_ms": _i64, "kind": _s, "lease": _u64, "name": _s, "endpoint": _s,
        "port": _u16, "mode": _s, "pid": _i32, "uid": _u32, "comm": _s, "code": _i,
        "reason": _s, "conflicts_with": _s, "count": _u64,
    },
    "reservation": {
        "name": _s, "target": _s, "tcp": _i, "udp": _i, "address": _s, "port_first": _u16,
        "port_last": _u16, "hold": _i, "origin": _s, "principals": _s,
    },
}


def _library_path():
    explicit = os.environ.get("PORTBROKER_LIBRARY")
    if explicit:
        return explicit
    return ctypes.util.find_library("portbroker") or "libportbroker.so.0"


def load():
    """Loads libportbroker.so ($PORTBROKER_LIBRARY, else the system's) and declares its C ABI."""
    path = _library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"portbroker: cannot load the C library {path!r} ({e}); install portbroker "
            "(make install) or set $PORTBROKER_LIBRARY to libportbroker.so") from None
    for name, (restype, argtypes) in _FUNCTIONS.items():
        fn = getattr(lib, "portbroker_" + name)
        fn.restype = restype
        fn.argtypes = argtypes
    for prefix, fields in _ACCESSORS.items():
        for field, restype in fields.items():
            fn = getattr(lib, f"portbroker_{prefix}_{field}")
            fn.restype = restype
            fn.argtypes = [_p]
    have = lib.portbroker_abi_version()
    if have < ABI_VERSION:
        raise ImportError(f"portbroker: {path} has C ABI version {have}, this package needs "
                          f"{ABI_VERSION} or later")
    return lib


def read(lib, prefix, obj):
    """Every field of one C object, by its accessors, as a dict (strings decoded)."""
    out = {}
    for field in _ACCESSORS[prefix]:
        value = getattr(lib, f"portbroker_{prefix}_{field}")(obj)
        out[field] = value.decode() if isinstance(value, bytes) else value
    return out
