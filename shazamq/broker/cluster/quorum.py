"""The metadata quorum: a Raft-replicated log of metadata records, built on pysyncobj.

Every broker runs one `MetadataQuorum`. The brokers listed in `voters` elect a leader and
replicate the log; any other broker is an *observer* (pysyncobj's read-only node): it
receives and applies every committed record but never votes and never leads.

Records are opaque `bytes` (our msgspec encodings). Each is replicated, with its proposal's
token, as the arguments of a single `@replicated` method, applied once per node to the
`machine` given to us, and then handed to the event loop through `on_apply`, in commit order.

Threads. pysyncobj drives Raft from its own tick thread; the machine is applied there.
Nothing of pysyncobj runs on the event loop: construction (PBKDF2 key derivation, journal
load, bind) happens in an owner thread that stays alive until `stop()` (pysyncobj stops
ticking as soon as the thread that built it exits, so that thread must not be a pool worker),
and everything that crosses back into asyncio goes through `loop.call_soon_threadsafe`.
Because those posts are FIFO and the apply of a record is posted before the completion of
its proposal, `propose()` returns only after `on_apply` for that record has run.

Observers propose through pysyncobj itself: a read-only node that knows the leader sends the
command over its connection to the leader, which appends it and answers with the log index;
the observer completes the proposal when it applies that index. (Verified by the tests.)

Failures and retries. Every proposal carries a random token, and the replicated method
skips a token it has already applied (returning the first result), so `propose()` can retry
safely whatever pysyncobj reports - no leader, not the leader, discarded by a new leader, or
a leader change that leaves the outcome unknown - until its timeout; a record is applied at
most once per proposal. The tokens of the last `DEDUP_WINDOW` records are part of the
replicated state (kept in log order, carried in snapshots), so every node skips the same
duplicates. `propose()` raises `QuorumUnavailable` when the timeout passes (the record may
still commit later, as any timed-out write), when the queue is full, or when stopped.

Durability. pysyncobj 0.3.17 writes its journal through an mmap and never fsyncs it (it has
no `flushJournal` option): that survives a crashed process but not a crashed machine. So the
journal, its meta file (term, vote, commit index), the snapshot and their directory are
fsynced before this node acknowledges entries or votes, and by the leader before it counts
its own copy of a new entry (see `_RaftNode.sync_to_disk`).

Snapshots. Log compaction writes `raft.snapshot` in our own format (magic, msgpack header
with the two boundary log entries pysyncobj needs and the recent proposal tokens, then
`machine.snapshot()` verbatim); loading one calls `machine.restore()` and posts `on_restore`.
The leader sends that same file to a follower too far behind its log. Nothing of ours is
pickled. pysyncobj still pickles its own wire messages and log commands; with a secret set,
every frame is Fernet-authenticated before it is unpickled, so only holders of the secret
reach `pickle.loads`.

Security. `secret` is pysyncobj's password: a peer with another secret fails the handshake
and is disconnected, so it can neither join, vote, nor inject records. With `tls` (a server
and a client `ssl.SSLContext`, see `MetadataQuorum.tls_contexts`) every quorum connection,
incoming and outgoing, voter or observer, is also TLS with certificates required and
verified against the CA on both sides; host names are not checked, the CA decides who is a
member. The secret layer runs inside TLS unchanged, so either one alone still keeps
outsiders out. pysyncobj has no TLS: `_TlsTransport` swaps its connections and server for
ours, which do the handshake, reads and writes non-blockingly in pysyncobj's own poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import logging
import os
import pathlib
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType, set_keepalive
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from shazamq.protocol.errors import ErrorCode

logger = logging.getLogger(__name__)

_pysyncobj_logger = logging.getLogger("pysyncobj")
if _pysyncobj_logger.level == logging.NOTSET:  # leave an operator's explicit choice alone
    _pysyncobj_logger.setLevel(logging.WARNING)

JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "raft.snapshot"

# Timings for a LAN: heartbeats well inside the election timeout, a dead connection noticed
# within a few seconds, and reconnects every second (pysyncobj's default of 5 s would make a
# restarted voter wait that long before its peers dial it again).
RAFT_MIN_TIMEOUT = 0.4
RAFT_MAX_TIMEOUT = 1.4
APPEND_ENTRIES_PERIOD = 0.1
CONNECTION_TIMEOUT = 3.0
CONNECTION_RETRY = 1.0
# A leader that hears from no majority for this long steps down (default 30 s would leave an
# isolated leader accepting proposals that can never commit for half a minute).
LEADER_FALLBACK_TIMEOUT = 2.5
# The metadata log is small: snapshot after a few thousand entries or every ten minutes.
COMPACTION_MIN_ENTRIES = 4096
COMPACTION_MIN_TIME = 600.0
COMMANDS_QUEUE_SIZE = 4096
# pysyncobj splits an entry at least this big into chunks with an off-by-overhead bug
# (it compares chunk offsets with the command's length instead of the pickled entry's);
# a generous batch size plus a record limit well below it keeps every entry whole.
_BATCH_BYTES = 1 << 20
MAX_RECORD_BYTES = _BATCH_BYTES // 2

_RETRY_PAUSE = 0.05
_ACK_MESSAGES = frozenset({"next_node_idx", "response_vote", "request_vote"})

# Tokens remembered for duplicate suppression: far more proposals than can be in flight
# across one failover, and small enough to ride along in every snapshot.
DEDUP_WINDOW = 4096

# The token makes a repeated proposal harmless, so every failure whose outcome is "not
# appended" or "unknown" is retried until the caller's timeout.
_RETRYABLE = {
    FAIL_REASON.MISSING_LEADER: "no leader elected",
    FAIL_REASON.NOT_LEADER: "the node asked is no longer the leader",
    FAIL_REASON.DISCARDED: "a new leader discarded the record before it committed",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before confirming the record",
    FAIL_REASON.UNKNOWN_OUTCOME: "the record's confirmation was overtaken by a snapshot",
}
_FATAL = {
    FAIL_REASON.QUEUE_FULL: f"the proposal queue is full ({COMMANDS_QUEUE_SIZE} records waiting)",
    FAIL_REASON.REQUEST_DENIED: "the leader denied the request",
}


class StateMachine(Protocol):
    """Deterministic: the same records in the same order give the same state on every node."""

    def apply(self, record: bytes) -> int: ...  # returns 0 or a Kafka error code
    def snapshot(self) -> bytes: ...  # msgspec-encoded whole state
    def restore(self, data: bytes) -> None: ...


class QuorumUnavailable(Exception):
    """The quorum cannot take a proposal now: no leader, timed out, or queue full."""


# --- snapshot file ---------------------------------------------------------------------

_SNAPSHOT_MAGIC = b"SHZQSNP1"
_U32 = struct.Struct(">I")


class _Entry(msgspec.Struct, array_like=True, frozen=True):
    """A pysyncobj log entry; the snapshot must carry the last two applied ones."""

    command: bytes
    index: int
    term: int

    @classmethod
    def of(cls, entry: Any) -> _Entry:
        return cls(bytes(entry[0]), int(entry[1]), int(entry[2]))

    def as_tuple(self) -> tuple[bytes, int, int]:
        return (self.command, self.index, self.term)


class _SnapshotHeader(msgspec.Struct, array_like=True, frozen=True):
    last: _Entry
    previous: _Entry
    cluster: list[str]
    # (token, result) of the last DEDUP_WINDOW records, oldest first
    recent: list[tuple[bytes, int]]
    state_size: int
    state_crc: int


def encode_snapshot(
    last: _Entry,
    previous: _Entry,
    cluster: list[str],
    recent: list[tuple[bytes, int]],
    state: bytes,
) -> bytes:
    header = msgspec.msgpack.encode(
        _SnapshotHeader(last, previous, cluster, recent, len(state), zlib.crc32(state))
    )
    return b"".join((_SNAPSHOT_MAGIC, _U32.pack(len(header)), header, state))


def decode_snapshot(blob: bytes) -> tuple[_SnapshotHeader, bytes]:
    """Split a snapshot file into its header and the machine's state; ValueError if damaged."""
    start = len(_SNAPSHOT_MAGIC) + _U32.size
    if len(blob) < start or not blob.startswith(_SNAPSHOT_MAGIC):
        raise ValueError("not a shazamq quorum snapshot")
    (size,) = _U32.unpack_from(blob, len(_SNAPSHOT_MAGIC))
    try:
        header = msgspec.msgpack.decode(blob[start : start + size], type=_SnapshotHeader)
    except msgspec.DecodeError as exc:
        raise ValueError(f"snapshot header is damaged: {exc}") from None
    state = blob[start + size :]
    if len(state) != header.state_size or zlib.crc32(state) != header.state_crc:
        raise ValueError("snapshot state is truncated or damaged")
    return header, state


# --- disk durability -------------------------------------------------------------------


class _Disk:
    """fsyncs pysyncobj's files, which it only ever writes through the page cache."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.journal = directory / JOURNAL_FILE
        self.snapshot = directory / SNAPSHOT_FILE
        # pysyncobj keeps term, vote and commit index beside the journal under this name.
        self.files = (self.journal, directory / (JOURNAL_FILE + ".meta"), self.snapshot)
        self.dirty = True
        # pysyncobj rewrites the journal in place one tick after a snapshot is written, and
        # the log can come out the same length, so fsync on the ticks until then regardless.
        self.resync_ticks = 0
        self._failing = False

    def sync(self) -> None:
        try:
            for path in self.files:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            # Renames (meta file, snapshot) are durable only once the directory is.
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            if not self._failing:
                logger.exception("cannot fsync the quorum journal in %s", self.directory)
            self._failing = True
            return
        self._failing = False
        self.dirty = False


class _SyncingTransport(TCPTransport):
    """pysyncobj's TCP transport with two fixes applied to the messages it carries.

    Durability: the journal reaches the disk before this node acknowledges entries or votes.

    Pipelining: pysyncobj's leader sets a follower's next index from every success ack, so
    an ack for one append_entries that arrives while a later one is in flight moves it
    back, and the next send repeats entries the follower has. pysyncobj's follower then
    truncates its log after the repeated send's start - conflict or not - and appends the
    same entries again, logging CRITICAL "truncating already-applied log entries". With
    unbatched sends that happened to ~5% of proposals under load. So after such an ack the
    leader is told the index it has already sent up to, as a follower's reset would tell
    it. The next index only decides what the leader sends next; if it is ever wrong the
    follower's reply resets it, as it always does.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        # node -> (term, last log index sent to it on this connection); leader only
        self._sent: dict[Any, tuple[int, int]] = {}
        super().__init__(syncObj, selfNode, otherNodes)

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if not isinstance(message, dict):
            super()._onMessageReceived(node, message)
            return
        raft = self._syncObj
        kind = message.get("type")
        # Entries, a snapshot chunk or a vote request are written to disk while this
        # message is handled, and the acknowledgement is sent from inside that handling.
        if kind == "request_vote" or (
            kind == "append_entries"
            and (
                message.get("entries")
                or "transmission" in message
                or message.get("serialized") is not None
            )
        ):
            raft.disk.dirty = True
        super()._onMessageReceived(node, message)
        if kind == "next_node_idx":
            self._keep_next_index(node, message)

    def _keep_next_index(self, node: Any, ack: dict[str, Any]) -> None:
        sent = self._sent.get(node)
        if sent is None:
            return
        raft = self._syncObj
        term, last_sent = sent
        if ack.get("reset") or not ack.get("success") or term != raft.raftCurrentTerm:
            del self._sent[node]  # the follower corrected us or the term moved: start over
            return
        if not raft._isLeader() or ack["next_node_idx"] > last_sent:
            return
        super()._onMessageReceived(
            node,
            {
                "type": "next_node_idx",
                "next_node_idx": last_sent + 1,
                "reset": True,
                "success": False,
            },
        )

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict):
            kind = message.get("type")
            if kind in _ACK_MESSAGES:
                self._syncObj.sync_to_disk()
            elif kind == "append_entries":
                entries = message.get("entries")
                if "prevLogIdx" not in message or "transmission" in message:
                    self._sent.pop(node, None)  # a snapshot or a chunked entry: no pipeline
                elif entries:
                    self._sent[node] = (int(message["term"]), int(entries[-1][1]))
        sent = bool(super().send(node, message))
        if not sent:
            self._sent.pop(node, None)
        return sent

    def _onNodeDisconnected(self, node: Any) -> None:
        self._sent.pop(node, None)  # whatever was in flight may be lost
        super()._onNodeDisconnected(node)

    def _onReadonlyNodeDisconnected(self, node: Any) -> None:
        self._sent.pop(node, None)
        super()._onReadonlyNodeDisconnected(node)


# --- TLS -------------------------------------------------------------------------------

# A TLS record carries at most 16 KiB of data: sending in chunks of that size keeps a retried
# write (OpenSSL needs the same bytes again after "want write") small and easy to repeat.
_TLS_CHUNK = 16 * 1024
_FRAME = struct.Struct("i")  # pysyncobj's frame length prefix: native-endian int32
# One warning per peer and this many seconds about failed handshakes: a misconfigured peer
# retries every CONNECTION_RETRY seconds and would otherwise flood the log.
_HANDSHAKE_LOG_INTERVAL = 60.0
_handshake_logged: dict[str, float] = {}
_handshake_log_lock = threading.Lock()


def _log_handshake_failure(peer: str, exc: BaseException) -> None:
    # Keyed by host: an incoming peer comes from a new ephemeral port every time.
    host = peer.rsplit(":", 1)[0]
    now = time.monotonic()
    with _handshake_log_lock:
        if now - _handshake_logged.get(host, -_HANDSHAKE_LOG_INTERVAL) < _HANDSHAKE_LOG_INTERVAL:
            return
        if len(_handshake_logged) >= 1024:  # many scanning hosts: forget, don't grow
            _handshake_logged.clear()
        _handshake_logged[host] = now
    logger.warning("quorum TLS handshake with %s failed: %s", peer, exc)


class _Phase(enum.Enum):
    DISCONNECTED = 0
    CONNECTING = 1  # TCP connect in progress (outgoing)
    HANDSHAKE = 2  # TLS handshake in progress
    CONNECTED = 3


# What pysyncobj's transport sees: a connection is only CONNECTED once TLS is established.
_PUBLIC_STATE = {
    _Phase.DISCONNECTED: CONNECTION_STATE.DISCONNECTED,
    _Phase.CONNECTING: CONNECTION_STATE.CONNECTING,
    _Phase.HANDSHAKE: CONNECTION_STATE.CONNECTING,
    _Phase.CONNECTED: CONNECTION_STATE.CONNECTED,
}


class _TlsConnection(TcpConnection):
    """pysyncobj's connection, framing and secret layer over a mutually authenticated TLS link.

    TcpConnection keeps its socket and buffers in name-mangled attributes that a subclass
    cannot reach, so every method that touches them is reimplemented here; only the public
    attributes the transport sets (encryptor and the random keys of the secret handshake)
    are inherited. The frame format and the secret layer inside TLS are pysyncobj's own.

    Everything runs in pysyncobj's tick thread, driven by its poller: the socket is
    non-blocking and a TLS operation that needs the other direction ("want read" during a
    write, "want write" during a read or the handshake) is retried on the next event, with
    the poller asked for writability whenever TLS or our buffer is waiting for it.
    """

    def __init__(
        self,
        poller: Any,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        timeout: float,
        send_buffer: int,
        recv_buffer: int,
        keepalive: tuple[int, int, int] | None,
        accepted: socket.socket | None = None,
        peer: str = "?",
    ) -> None:
        # No socket for the base class: it must not subscribe its own handler to the poller.
        super().__init__(poller, timeout=timeout)
        self._poller = poller
        self._context = context
        self._server_side = server_side
        self._timeout = timeout
        self._send_buffer = send_buffer
        self._recv_buffer = recv_buffer
        self._keepalive = keepalive
        self._peer = peer
        self._host: str | None = None  # the voter dialled (client side)
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        self._phase = _Phase.DISCONNECTED
        self._read_buf = bytearray()
        self._write_buf = bytearray()
        self._retry_size = 0  # length of a write TLS asked us to repeat, 0 if none
        self._want_write = False  # TLS needs the socket writable before it can go on
        self._last_read = _monotonic()
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        if accepted is not None:
            self._set_keepalive(accepted)
            self._start_tls(accepted)

    # --- TcpConnection's interface ---

    @property
    def state(self) -> int:
        return _PUBLIC_STATE[self._phase]

    def fileno(self) -> int | None:
        return self._fd

    def setOnConnectedCallback(self, onConnected: Callable[[], None] | None) -> None:
        self._on_connected = onConnected

    def setOnMessageReceivedCallback(
        self,
        onMessageReceived: Callable[[Any], None] | None,
    ) -> None:
        self._on_message = onMessageReceived

    def setOnDisconnectedCallback(self, onDisconnected: Callable[[], None] | None) -> None:
        self._on_disconnected = onDisconnected

    def getSendBufferSize(self) -> int:
        return len(self._write_buf)

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        self._close()
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._set_keepalive(sock)
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
        except OSError:
            sock.close()
            return False
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            return False
        self._peer = f"{host}:{port}"
        self._host = host
        self._read_buf.clear()
        self._write_buf.clear()
        self._retry_size = 0
        self._want_write = False
        self._last_read = _monotonic()  # the handshake must finish within the timeout
        self._sock = sock
        self._fd = sock.fileno()
        self._phase = _Phase.CONNECTING
        self._subscribe()
        return True

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = zlib.compress(pysyncobj_pickle.dumps(message), 3)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(_monotonic()))
        self._write_buf += _FRAME.pack(len(data))
        self._write_buf += data
        if self._phase is not _Phase.CONNECTED:
            return  # sent once the handshake is done; dropped by a reconnect, as pysyncobj's
        if self._expired():
            self.disconnect()
            return
        self._flush()
        if self._phase is _Phase.CONNECTED:
            self._subscribe()

    def disconnect(self) -> None:
        notify = self._on_disconnected is not None and self._phase is not _Phase.DISCONNECTED
        self.sendRandKey = None
        self.recvRandKey = None
        self.recvLastTimestamp = 0
        self._close()
        if notify and self._on_disconnected is not None:
            self._on_disconnected()

    # --- for the transport ---

    def expire_handshake(self) -> None:
        """Drop a connection stuck before TLS is up (tick thread).

        pysyncobj checks its timeout only when a socket has an event; a handshake with a
        peer that never answers (a plaintext node waiting for a frame) has none, and the
        transport does not redial while the connection claims to be connecting.
        """
        if self._phase in (_Phase.CONNECTING, _Phase.HANDSHAKE) and self._expired():
            _log_handshake_failure(self._peer, TimeoutError("no TLS handshake within timeout"))
            self.disconnect()

    # --- internals ---

    def _set_keepalive(self, sock: socket.socket) -> None:
        if self._keepalive is not None:
            set_keepalive(sock, *self._keepalive)

    def _close(self) -> None:
        if self._fd is not None:
            self._poller.unsubscribe(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._read_buf.clear()
        self._write_buf.clear()
        self._retry_size = 0
        self._want_write = False
        self._phase = _Phase.DISCONNECTED

    def _expired(self) -> bool:
        return _monotonic() - self._last_read > self._timeout

    def _subscribe(self) -> None:
        if self._fd is None:
            return
        events = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        if (
            self._want_write
            or self._phase is _Phase.CONNECTING
            or (self._phase is _Phase.CONNECTED and self._write_buf)
        ):
            events |= POLL_EVENT_TYPE.WRITE
        self._poller.subscribe(self._fd, self._on_event, events)

    def _start_tls(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            tls = self._context.wrap_socket(
                sock,
                server_side=self._server_side,
                do_handshake_on_connect=False,
                # Ignored by tls_contexts' client (no host name check); a context that does
                # check gets the voter's address to match against the certificate.
                server_hostname=None if self._server_side else self._host,
            )
        except (OSError, ValueError) as exc:
            _log_handshake_failure(self._peer, exc)
            sock.close()
            self.disconnect()
            return
        self._sock = tls
        self._fd = tls.fileno()
        self._phase = _Phase.HANDSHAKE
        self._last_read = _monotonic()
        self._subscribe()

    def _on_event(self, descr: int, event: int) -> None:
        if descr != self._fd:
            self._poller.unsubscribe(descr)
            return
        if event & POLL_EVENT_TYPE.ERROR or self._expired():
            self.disconnect()
            return
        sock = self._sock
        assert sock is not None
        if self._phase is _Phase.CONNECTING:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            self._start_tls(sock)
            if self._phase is not _Phase.HANDSHAKE:
                return
        if self._phase is _Phase.HANDSHAKE and not self._handshake():
            if self._phase is not _Phase.DISCONNECTED:
                self._subscribe()
            return
        if event & POLL_EVENT_TYPE.READ:
            self._last_read = _monotonic()
        # Both directions on every event: TLS may have been waiting on either one, and an
        # attempt that cannot proceed costs one "want" exception.
        self._flush()
        if self._phase is not _Phase.CONNECTED:
            return
        self._read()
        if self._phase is _Phase.CONNECTED:
            self._subscribe()

    def _handshake(self) -> bool:
        """Advance the handshake; True once TLS is up and the connection still open."""
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write = False
            return False
        except ssl.SSLWantWriteError:
            self._want_write = True
            return False
        except OSError as exc:  # ssl.SSLError included: bad certificate, not TLS, reset...
            _log_handshake_failure(self._peer, exc)
            self.disconnect()
            return False
        self._phase = _Phase.CONNECTED
        self._want_write = False
        self._last_read = _monotonic()
        if not self._server_side and self._on_connected is not None:
            # The transport starts pysyncobj's own (secret) handshake from here.
            self._on_connected()
        return self._phase is _Phase.CONNECTED

    def _flush(self) -> None:
        sock = self._sock
        while self._write_buf and sock is not None:
            size = self._retry_size or min(len(self._write_buf), _TLS_CHUNK)
            try:
                sent = sock.send(self._write_buf[:size])
            except ssl.SSLWantWriteError:
                self._retry_size, self._want_write = size, True
                return
            except ssl.SSLWantReadError:
                self._retry_size, self._want_write = size, False
                return
            except BlockingIOError:
                self._want_write = True
                return
            except OSError:
                self.disconnect()
                return
            self._retry_size = 0
            if sent <= 0:
                self.disconnect()
                return
            del self._write_buf[:sent]
        self._want_write = False

    def _read(self) -> None:
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        while True:
            try:
                # Decrypted bytes TLS already holds produce no poller event: take them all.
                chunk = sock.recv(max(self._recv_buffer, sock.pending()))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._want_write = True
                break
            except OSError:  # including a TLS alert or close_notify from the peer
                self.disconnect()
                return
            if not chunk:
                self.disconnect()
                return
            self._read_buf += chunk
        while self._phase is _Phase.CONNECTED:
            message = self._parse()
            if message is _NO_MESSAGE:
                return
            if self._on_message is not None:
                self._on_message(message)

    def _parse(self) -> Any:
        buf = self._read_buf
        if len(buf) < _FRAME.size:
            return _NO_MESSAGE
        (size,) = _FRAME.unpack_from(buf)
        if size < 0:
            self.disconnect()
            return _NO_MESSAGE
        end = _FRAME.size + size
        if len(buf) < end:
            return _NO_MESSAGE
        data = bytes(buf[_FRAME.size : end])
        del buf[:end]
        # pysyncobj's checks, verbatim in effect: a frame that fails any of them ends the link.
        try:
            if self.encryptor:
                stamp = self.encryptor.extract_timestamp(data)
                if stamp < self.recvLastTimestamp:
                    raise ValueError("replayed frame")
                self.recvLastTimestamp = stamp
                data = self.encryptor.decrypt(data)
            message = pysyncobj_pickle.loads(zlib.decompress(data))
            if self.recvRandKey:
                key, message = message
                if key != self.recvRandKey:
                    raise ValueError("frame of another session")
        except Exception:
            self.disconnect()
            return _NO_MESSAGE
        return message


_NO_MESSAGE = object()


class _TlsServer(TcpServer):
    """pysyncobj's listening socket, handing out `_TlsConnection`s (server side)."""

    def __init__(
        self,
        poller: Any,
        host: str,
        port: int,
        on_new_connection: Callable[[TcpConnection], None],
        *,
        context: ssl.SSLContext,
        send_buffer: int,
        recv_buffer: int,
        timeout: float,
        keepalive: tuple[int, int, int] | None,
    ) -> None:
        super().__init__(poller, host, port, on_new_connection)
        self._poller = poller
        self._address = (host, int(port))
        self._family = _getAddrType(host)
        self._on_new = on_new_connection
        self._context = context
        self._send_buffer = send_buffer
        self._recv_buffer = recv_buffer
        self._timeout = timeout
        self._keepalive = keepalive
        self._sock: socket.socket | None = None
        self._fd: int | None = None

    def bind(self) -> None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(self._address)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._fd = sock.fileno()
        self._poller.subscribe(self._fd, self._accept, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        if self._fd is not None:
            self._poller.unsubscribe(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _accept(self, descr: int, event: int) -> None:
        if self._sock is None or not event & POLL_EVENT_TYPE.READ:
            return
        try:
            sock, address = self._sock.accept()
        except OSError:
            # The client gave up before we accepted, or we are out of descriptors: keep
            # listening (pysyncobj's server would close its socket for good here).
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        conn = _TlsConnection(
            self._poller,
            self._context,
            server_side=True,
            timeout=self._timeout,
            send_buffer=self._send_buffer,
            recv_buffer=self._recv_buffer,
            keepalive=self._keepalive,
            accepted=sock,
            peer=f"{address[0]}:{address[1]}",
        )
        if conn.state != CONNECTION_STATE.DISCONNECTED:  # else TLS could not even start
            self._on_new(conn)


class _TlsTransport(_SyncingTransport):
    """`_SyncingTransport` whose every connection, both directions, is TLS with client certs.

    The contexts come from the node (`_RaftNode.tls`): pysyncobj builds the transport itself
    and passes it nothing else.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        # Set before TCPTransport.__init__, which creates the server and the outgoing
        # connections through the overrides below.
        self._tls_server, self._tls_client = syncObj.tls
        super().__init__(syncObj, selfNode, otherNodes)

    def _createServer(self) -> None:
        # TCPTransport._createServer, building a TLS server instead of a TcpServer.
        conf = self._syncObj.conf
        if conf.bindAddress is not None:
            host, port = conf.bindAddress.rsplit(":", 1)
        elif self._selfNode.address is not None:
            host, port = self._selfNode.address.rsplit(":", 1)
            host = "::" if ":" in host else "0.0.0.0"
        else:
            raise RuntimeError("Unable to determine bind address")
        if host != "0.0.0.0":
            host = globalDnsResolver().resolve(host)
        self._server = _TlsServer(
            self._syncObj._poller,
            host,
            int(port),
            self._onNewIncomingConnection,
            context=self._tls_server,
            send_buffer=conf.sendBufferSize,
            recv_buffer=conf.recvBufferSize,
            timeout=conf.connectionTimeout,
            keepalive=conf.tcp_keepalive,
        )

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        plain = self._connections.get(node)
        if plain is None or isinstance(plain, _TlsConnection):
            return
        # TCPTransport.addNode made a plain outgoing connection (not yet connected):
        # replace it with a TLS one wired the same way.
        conf = self._syncObj.conf
        conn = _TlsConnection(
            self._syncObj._poller,
            self._tls_client,
            server_side=False,
            timeout=conf.connectionTimeout,
            send_buffer=conf.sendBufferSize,
            recv_buffer=conf.recvBufferSize,
            keepalive=conf.tcp_keepalive,
            peer=str(node.address),
        )
        conn.encryptor = self._syncObj.encryptor
        conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
        self._connections[node] = conn

    def _onTick(self) -> None:
        super()._onTick()
        for conn in [*self._connections.values(), *self._unknownConnections]:
            if isinstance(conn, _TlsConnection):
                conn.expire_handshake()


class _RaftNode(SyncObj):
    """pysyncobj's node with the one replicated method that carries our records."""

    def __init__(
        self,
        *,
        self_address: str | None,
        partners: list[str],
        conf: SyncObjConf,
        apply: Callable[[bytes, bytes], int],
        disk: _Disk,
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None,
    ) -> None:
        # Set before SyncObj.__init__: it starts the tick thread, which may apply journal
        # records and send acknowledgements before the constructor returns, and it builds
        # the transport, which takes the TLS contexts from here.
        self.apply_committed = apply
        self.disk = disk
        self.tls = tls
        self.synced_shape: tuple[int, int] | None = None
        transport = _SyncingTransport if tls is None else _TlsTransport
        super().__init__(self_address, partners, conf=conf, transportClass=transport)

    @replicated
    def apply_record(self, record: bytes, token: bytes) -> int:
        return self.apply_committed(record, token)

    def sync_to_disk(self, *, tick_end: bool = False) -> None:
        """fsync if the log or the term moved since the last fsync (tick thread only).

        The leader appends in one tick and counts its own copy towards a majority in the
        next, and this runs at the end of every tick, so the leader's copy is durable
        before it counts; followers get here from the transport before they acknowledge.
        """
        disk = self.disk
        settling = disk.resync_ticks > 0
        if tick_end and settling:
            disk.resync_ticks -= 1
        shape = (self._getRaftLogSize(), self.raftCurrentTerm)
        if disk.dirty or settling or shape != self.synced_shape:
            disk.sync()
            if not disk.dirty:
                self.synced_shape = shape


def _close_wakeup_pipe(raft: _RaftNode) -> None:
    # pysyncobj's destroy() leaves open the pipe that wakes its tick thread (two fds per
    # start). Its thread has exited and propose() refuses once stopping, so nothing writes
    # to it any more. These are private names: do nothing if a release renames them.
    notifier = getattr(raft, "_SyncObj__pipeNotifier", None)
    for name in ("_PipeNotifier__pipeR", "_PipeNotifier__pipeW"):
        fd = getattr(notifier, name, None)
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)


# --- the quorum --------------------------------------------------------------------------


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class MetadataQuorum:
    """This broker's member of the metadata quorum (a voter or an observer)."""

    def __init__(
        self,
        *,
        node_id: int,
        voters: dict[int, tuple[str, int]],
        bind_host: str,
        journal_dir: pathlib.Path,
        secret: str,
        machine: StateMachine,
        on_apply: Callable[[bytes], None],
        on_restore: Callable[[bytes], None],
        on_leadership: Callable[[bool], None],
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    ) -> None:
        """`tls`: (server, client) contexts to run every quorum connection over TLS (see
        `tls_contexts`); None for plain TCP. The secret applies either way."""
        if not voters:
            raise ValueError("the metadata quorum needs at least one voter")
        if not secret:
            raise ValueError("the metadata quorum needs a non-empty secret")
        if tls is not None:
            server, client = tls
            # Membership rests on the peer's certificate in both directions: refuse
            # contexts that would let a peer without one through.
            if server.verify_mode != ssl.CERT_REQUIRED or client.verify_mode != ssl.CERT_REQUIRED:
                raise ValueError("quorum TLS contexts must both require peer certificates")
        self._node_id = node_id
        self._voters = dict(voters)
        self._addresses = {nid: f"{host}:{port}" for nid, (host, port) in self._voters.items()}
        if len(set(self._addresses.values())) != len(self._addresses):
            raise ValueError(f"two voters share an address: {self._voters}")
        self._id_by_address = {address: nid for nid, address in self._addresses.items()}
        self._bind_host = bind_host
        self._journal_dir = pathlib.Path(journal_dir)
        self._secret = secret
        self._machine = machine
        self._on_apply = on_apply
        self._on_restore = on_restore
        self._on_leadership = on_leadership
        self._tls = tls

        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: threading.Thread | None = None
        self._stop_requested = threading.Event()
        self._stopped: asyncio.Future[None] | None = None
        self._raft: _RaftNode | None = None
        self._stopping = False
        self._pending: set[asyncio.Future[tuple[Any, int]]] = set()
        # Replicated dedup state, touched only in pysyncobj's thread: token -> first result.
        self._recent: OrderedDict[bytes, int] = OrderedDict()
        self._leading_seen = False  # tick thread's view
        self._leading_told = False  # what on_leadership last said, on the loop
        self._status: dict[str, int | None] = self._empty_status()

    @staticmethod
    def tls_contexts(
        cert_file: str, key_file: str, ca_file: str
    ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) contexts for quorum TLS: both present `cert_file` and require a peer
        certificate signed by `ca_file`. Host names are not checked: voters may be listed by IP,
        and the CA alone decides who is a member."""
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert_file, key_file)
        server.load_verify_locations(cafile=ca_file)
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        client.load_cert_chain(cert_file, key_file)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_REQUIRED
        return server, client

    # --- lifecycle ---

    async def start(self) -> None:
        """Start pysyncobj in its own threads; returns once it is constructed and ticking."""
        if self._owner is not None:
            raise RuntimeError("the metadata quorum was already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        started: asyncio.Future[_RaftNode] = loop.create_future()
        self._stopped = loop.create_future()
        self._owner = threading.Thread(
            target=self._own,
            args=(started, self._stopped),
            name=f"quorum-{self._node_id}",
            daemon=True,
        )
        self._owner.start()
        try:
            self._raft = await started
        except BaseException:
            self._stop_requested.set()
            raise
        logger.info(
            "metadata quorum started: node %d as %s of voters %s",
            self._node_id,
            "voter" if self.is_voter else "observer",
            sorted(self._voters),
        )

    async def stop(self) -> None:
        """Destroy pysyncobj; every callback it posted has run when this returns."""
        if self._stopped is None:
            return
        self._stopping = True
        self._stop_requested.set()
        # The owner thread resolves this after the tick thread has exited, so every
        # on_apply/on_restore/on_leadership posted before is already ahead of us.
        await asyncio.shield(self._stopped)
        self._raft = None
        for future in list(self._pending):
            _reject(future, QuorumUnavailable("the metadata quorum was stopped"))
        self._pending.clear()
        if self._leading_told:
            self._tell_leadership(False)

    def _own(self, started: asyncio.Future[_RaftNode], stopped: asyncio.Future[None]) -> None:
        # Owner thread: pysyncobj's tick thread runs only while its constructing thread lives.
        try:
            try:
                raft = self._build()
            except BaseException as exc:
                self._post(_reject, started, exc)
                return
            raft.addOnTickCallback(functools.partial(self._tick, raft))
            self._post(_resolve, started, raft)
            self._stop_requested.wait()
            try:
                raft.destroy_synchronous()
                _close_wakeup_pipe(raft)
            except Exception:
                logger.exception("error while stopping the metadata quorum")
        finally:
            self._post(_resolve, stopped, None)

    def _build(self) -> _RaftNode:
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        disk = _Disk(self._journal_dir)
        self_address = self._addresses.get(self._node_id)
        bind = None
        if self_address is not None:
            bind = f"{self._bind_host}:{self._voters[self._node_id][1]}"
        conf = SyncObjConf(
            password=self._secret,
            bindAddress=bind,
            journalFile=str(disk.journal),
            fullDumpFile=str(disk.snapshot),
            serializer=functools.partial(self._write_snapshot, disk),
            deserializer=self._read_snapshot,
            useFork=False,
            dynamicMembershipChange=False,
            raftMinTimeout=RAFT_MIN_TIMEOUT,
            raftMaxTimeout=RAFT_MAX_TIMEOUT,
            appendEntriesPeriod=APPEND_ENTRIES_PERIOD,
            connectionTimeout=CONNECTION_TIMEOUT,
            connectionRetryTime=CONNECTION_RETRY,
            leaderFallbackTimeout=LEADER_FALLBACK_TIMEOUT,
            logCompactionMinEntries=COMPACTION_MIN_ENTRIES,
            logCompactionMinTime=COMPACTION_MIN_TIME,
            commandsQueueSize=COMMANDS_QUEUE_SIZE,
            appendEntriesBatchSizeBytes=_BATCH_BYTES,
            logCompactionBatchSize=_BATCH_BYTES,
            # We wait for a leader ourselves (see propose), so nothing lingers in
            # pysyncobj's queue after the caller has been told the quorum is unavailable.
            commandsWaitLeader=False,
            # Unbatched, a proposal wakes the tick thread through a pipe and the leader sends
            # it at once: ~5 ms to commit on loopback instead of ~150 ms. The metadata log is
            # low-volume, so per-entry sends cost nothing that matters.
            appendEntriesUseBatch=False,
        )
        partners = [a for nid, a in self._addresses.items() if nid != self._node_id]
        return _RaftNode(
            self_address=self_address,
            partners=partners,
            conf=conf,
            apply=self._apply_committed,
            disk=disk,
            tls=self._tls,
        )

    # --- proposals ---

    async def propose(self, record: bytes, timeout: float = 5.0) -> int:
        """Replicate `record`; the machine's result once it is committed and applied here.

        Retries internally (never applying the record twice) until `timeout`, then raises
        QuorumUnavailable; the record may still commit after that.
        """
        record = bytes(record)
        if len(record) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(record)} bytes exceeds {MAX_RECORD_BYTES}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        token = os.urandom(16)
        reason = "no leader elected"
        while True:
            raft = self._raft
            if raft is None or self._stopping:
                raise QuorumUnavailable("the metadata quorum is not running")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise QuorumUnavailable(
                    f"{reason}; gave up after {timeout:g}s ({self._quorum_hint()})"
                )
            if not self._leader_reachable(raft):
                reason = self._no_leader_reason()
                await asyncio.sleep(min(_RETRY_PAUSE, remaining))
                continue
            future: asyncio.Future[tuple[Any, int]] = loop.create_future()
            self._pending.add(future)
            try:
                try:
                    raft.apply_record(
                        record, token, callback=functools.partial(self._settle, future)
                    )
                except BlockingIOError:
                    # pysyncobj's wake-up pipe is full: its thread is far behind.
                    raise QuorumUnavailable(_FATAL[FAIL_REASON.QUEUE_FULL]) from None
                result, error = await asyncio.wait_for(future, remaining)
            except TimeoutError:
                raise QuorumUnavailable(
                    f"record not committed within {timeout:g}s ({self._quorum_hint()}); "
                    "it may still commit later"
                ) from None
            finally:
                self._pending.discard(future)
            if error == FAIL_REASON.SUCCESS:
                return int(result)
            if error in _RETRYABLE:
                reason = _RETRYABLE[error]
                await asyncio.sleep(min(_RETRY_PAUSE, max(0.0, deadline - loop.time())))
                continue
            raise QuorumUnavailable(_FATAL.get(error, f"pysyncobj failure reason {error}"))

    def _settle(self, future: asyncio.Future[tuple[Any, int]], result: Any, error: int) -> None:
        # Tick thread. Posted after the on_apply of the same record, so it runs after it.
        self._post(_resolve, future, (result, error))

    def _leader_reachable(self, raft: _RaftNode) -> bool:
        leader = raft._getLeader()
        if leader is None:
            return False
        # A follower cut off from everyone never starts an election and keeps naming its
        # old leader; sending there would only wait out the timeout.
        return bool(raft._isLeader() or raft.isNodeConnected(leader))

    def _no_leader_reason(self) -> str:
        leader = self.leader_id
        return "no leader elected" if leader is None else f"leader {leader} is unreachable"

    def _quorum_hint(self) -> str:
        connected = self._status.get("voters_connected") or 0
        return f"{connected} of {len(self._voters)} voters reachable"

    # --- pysyncobj thread ---

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # A closed loop raises RuntimeError: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _apply_committed(self, record: bytes, token: bytes) -> int:
        seen = self._recent.get(token)
        if seen is not None:
            return seen  # a retried proposal whose first attempt committed after all
        try:
            code = int(self._machine.apply(record))
        except Exception:
            # Raising would make pysyncobj retry the same entry on the next tick forever.
            logger.exception("the metadata state machine failed on a committed record")
            code = int(ErrorCode.UNKNOWN_SERVER_ERROR)
        self._recent[token] = code
        if len(self._recent) > DEDUP_WINDOW:
            self._recent.popitem(last=False)
        self._post(self._on_apply, record)
        return code

    def _write_snapshot(self, disk: _Disk, path: str, data: Any) -> None:
        last, previous, cluster = data
        try:
            blob = encode_snapshot(
                _Entry.of(last),
                _Entry.of(previous),
                # An observer's own node is None in pysyncobj's cluster set.
                sorted(str(node.id) for node in cluster if node is not None),
                list(self._recent.items()),
                self._machine.snapshot(),
            )
            with open(path, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
        except Exception:
            logger.exception("cannot write the metadata snapshot %s", path)
            raise
        # pysyncobj renames the file into place after we return and truncates the journal
        # on its next tick: fsync the directory and the journal after both.
        disk.dirty = True
        disk.resync_ticks = 2
        logger.info("metadata snapshot written at log index %d", _Entry.of(last).index)

    def _read_snapshot(self, path: str) -> tuple[Any, ...]:
        try:
            header, state = decode_snapshot(pathlib.Path(path).read_bytes())
            self._machine.restore(state)
            self._recent = OrderedDict(header.recent)
        except Exception:
            logger.exception("cannot load the metadata snapshot %s", path)
            raise
        self._post(self._on_restore, state)
        logger.info("metadata state restored from the snapshot at log index %d", header.last.index)
        return (header.last.as_tuple(), header.previous.as_tuple(), list(header.cluster))

    def _tick(self, raft: _RaftNode) -> None:
        raft.sync_to_disk(tick_end=True)
        leading = bool(raft._isLeader())
        if leading != self._leading_seen:
            self._leading_seen = leading
            self._post(self._tell_leadership, leading)
        status = raft.getStatus()
        leader = raft._getLeader()
        leader_commit = status.get("leader_commit_idx")
        applied = int(status["last_applied"])
        connected = sum(1 for node in raft.otherNodes if raft.isNodeConnected(node))
        self._status = {
            "term": int(status["raft_term"]),
            "commit_index": int(status["commit_idx"]),
            "last_applied": applied,
            "leader_id": None if leader is None else self._id_by_address.get(str(leader.id)),
            "lag": None if leader_commit is None else max(0, int(leader_commit) - applied),
            "voters_connected": connected + (1 if self.is_voter else 0),
            "voters": len(self._voters),
            "log_entries": int(status["log_len"]),
        }

    # --- event loop ---

    def _tell_leadership(self, leading: bool) -> None:
        if leading == self._leading_told:
            return
        self._leading_told = leading
        logger.info(
            "node %d %s the metadata leader", self._node_id, "is now" if leading else "is no longer"
        )
        self._on_leadership(leading)

    # --- introspection ---

    def request_snapshot(self) -> None:
        """Ask pysyncobj to compact the log into a snapshot at its next tick."""
        raft = self._raft
        if raft is not None:
            raft.forceLogCompaction()

    @property
    def is_voter(self) -> bool:
        return self._node_id in self._voters

    @property
    def is_leader(self) -> bool:
        raft = self._raft
        return bool(raft is not None and not self._stopping and raft._isLeader())

    @property
    def leader_id(self) -> int | None:
        """Node id of the current Raft leader, None if unknown."""
        raft = self._raft
        if raft is None or self._stopping:
            return None
        leader = raft._getLeader()
        return None if leader is None else self._id_by_address.get(str(leader.id))

    def status(self) -> dict[str, int | None]:
        """Raft progress as of pysyncobj's last tick (lag: leader commit - last applied)."""
        if self._raft is None:
            return self._empty_status()
        return dict(self._status)

    def _empty_status(self) -> dict[str, int | None]:
        return {
            "term": None,
            "commit_index": None,
            "last_applied": None,
            "leader_id": None,
            "lag": None,
            "voters_connected": 0,
            "voters": len(self._voters),
            "log_entries": None,
        }
