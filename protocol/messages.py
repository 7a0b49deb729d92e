"""The vsae wire messages: a small, versioned set of msgpack maps, each validated on the way in.

Every message is a msgpack map `{"v": VERSION, "kind": <name>, <fields>...}`. `decode` never lets a
peer's bytes raise anything but `ProtocolError`: wrong types, unknown kinds or fields, oversized values
and a version mismatch all become a `ProtocolError` whose `code` goes back to the peer in an `Error`
message before the session closes.

Session (sender -> receiver unless marked <-):
  Hello(role="sender", model_sha256, model_bytes)   <- Hello(role="receiver", have_model, nonce, model_offset)
  Config(stream parameters, auth)
  ModelChunk(seq, data) x N, ModelDone(size, sha256)   (skipped when the receiver has the model; chunks of
      Config.chunk_size bytes, CHUNK_BYTES when it is 0; from chunk model_offset // chunk size when the
      receiver holds the start of it from an interrupted session)
  <- Ack(sha256)   -- the receiver verified and loaded the model; video starts only now
     (an early start, Config.early: <- Ack(sha256, pending) at once, the video starts, the model chunks
     follow during it, and <- Ack(sha256) once the receiver rebuilds with the model)
  Frame(index, capture_time) for a sent frame, once a second, on the unordered meta channel
  Modes(first, data)  -- a live call's guard (Config.guard): how to show source frames first.. (codec.guard)
  Update(version, part, parts, data) x parts  -- a live model update (codec.refresh), background flow
  <- UpdateAck(version, applied, reason)  -- the receiver verified and scheduled it, or refused it
  Shape(first, scale, temporal, low_width, low_height, plain, codec)  -- an adaptive stream (Config.shapes): from
      the keyframe of source frame `first` on, the video is every `temporal`-th frame ÷`scale` (plain: the codec's
      own frames at full size, shown as decoded, no model), in `codec` where it changes (sender/shapes.py)
  Probe(cluster, seq, count, data) x count  -- padding of a bandwidth probe (Config.probes), paced on the meta channel
  <- ProbeResult(cluster, received, span_us, counted, datagrams, datagram_bytes)  -- how many of them
      arrived, between the first and the last, and what else arrived meanwhile (sender/probe.py)
  <- Keyframe()    -- the receiver wants a fresh keyframe (vsae's receiver asks by RTCP PLI instead)
  Bye(frames, video_bytes, ...)   <- Bye(frames)
  Error(code, message) either way, then close.

Version 1 grows only by optional fields listed in a class's `omit_empty`: they stay off the wire while
empty, so a peer that predates them talks to this one unchanged unless the feature is used (it would
refuse the unknown field with `bad_field`). So far: `Hello.nonce` and `Config.auth`, the optional
shared secret (protocol.auth): a receiver with a secret sends a nonce, the sender answers with an
HMAC-SHA256 tag over the nonce, its hello and the config; `Hello.model_offset`, a resumed model
transfer; `Hello.rebuild_method` / `rebuild_iterations`, the receiver's rebuild; `Config.guard`, a live call whose sender guards every frame (then `modes` messages follow, and
`update` messages may); `Config.early` with `Ack.pending`, a call whose video starts before the model
has arrived (the model chunks then travel during the stream); `Config.chunk_size`, model chunks smaller than
CHUNK_BYTES (an in-call transfer over a narrow link); `Config.shapes`, a stream whose shape may change at
keyframes (`shape` messages); `Config.probes`, a sender that probes the link with padding (`probe` messages on
the meta channel, each cluster answered by a `probe_result`), and `ProbeResult.counted` with `datagrams` /
`datagram_bytes`, everything that arrived during a probe (without them the sender reads the link from the padding
alone); `Config.feedback`, a sender that asks for transport
feedback (RTCP, not a message here: protocol/feedback.py). A peer that predates these kinds refuses them as `unknown_kind`; they are sent only
when the feature is on. Anything incompatible bumps VERSION.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import msgpack

VERSION = 1
# Model bytes per chunk message, leaving room for the map around it: a whole chunk message stays
# within 16 KiB (aiortc's SCTP takes up to 64 KiB, smaller messages interleave better with control).
CHUNK_BYTES = 16 * 1024 - 64
# The smallest model chunk a sender may choose (Config.chunk_size): SCTP sends a message's packets back to
# back, so an in-call transfer over a narrow link needs chunks that the bottleneck's queue holds beside the
# video (16 KiB is 4 s of a 30 kbps link); below 1 KiB the per-message headers grow past ~10 %.
MIN_CHUNK_BYTES = 1024
MAX_MESSAGE_BYTES = 16 * 1024
MAX_TEXT = 256  # any string field
MAX_MODEL_BYTES = 256 * 1024 * 1024
MAX_FRAMES = 10_000_000
MAX_SIDE = 8192
SHA256_HEX = 64
NONCE_HEX = 32  # Hello.nonce: 16 random bytes, hex
# Modes.data: one key's frames (up to `temporal`, itself <= 64) at up to 13 bytes each (codec.guard).
MAX_MODES_BYTES = 1024
# A live call's model updates: versions a session may make, and parts (CHUNK_BYTES each) one may have
# (8 MiB, codec.refresh.MAX_UPDATE_BYTES).
MAX_UPDATES = 1_000_000
MAX_UPDATE_PARTS = 512
TAG_HEX = 64  # Config.auth: an HMAC-SHA256, hex
# Bandwidth probes (Config.probes): clusters a session may send, messages in one, padding bytes in one message
# (one SCTP packet's user data).
MAX_PROBES = 1_000_000
MAX_PROBE_MESSAGES = 64
MAX_PROBE_BYTES = 1200
# The datagrams a probe result may count between its first and last message (a span of at most 60 s: ProbeResult.span_us).
MAX_PROBE_ARRIVALS = 1_000_000
MAX_PROBE_ARRIVAL_BYTES = 1 << 32


class ProtocolError(Exception):
    """A message that is not valid vsae protocol; `code` is sent back to the peer in an Error."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str] = ""
    # field name -> (low, high) for numbers, max length for str/bytes
    limits: ClassVar[dict] = {}
    # optional fields added within version 1: left off the wire while empty (see the module docstring)
    omit_empty: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class Hello(Message):
    kind: ClassVar[str] = "hello"
    role: str  # "sender" or "receiver"
    software: str = "vsae"
    model_sha256: str = ""  # sender: the model it will use
    model_bytes: int = 0  # sender: its size
    have_model: bool = False  # receiver: it already holds that model (skip the transfer)
    nonce: str = ""  # receiver with a shared secret: the challenge the sender's Config.auth must cover
    # receiver: bytes of this model it already holds from an interrupted transfer (whole chunks of that
    # session's size); the sender sends the rest, from chunk model_offset // its chunk size (the receiver
    # keeps that many of its chunk size)
    model_offset: int = 0
    # receiver: how it rebuilds (in-between method, reprojections), so that a live call's sender can run the
    # same rebuild in its closed loop (sender/closedloop.py)
    rebuild_method: str = ""
    rebuild_iterations: int = 0
    limits: ClassVar[dict] = {"model_bytes": (0, MAX_MODEL_BYTES), "nonce": NONCE_HEX, "model_offset": (0, MAX_MODEL_BYTES),
                              "rebuild_method": 16, "rebuild_iterations": (0, 64)}
    omit_empty: ClassVar[tuple[str, ...]] = ("nonce", "model_offset", "rebuild_method", "rebuild_iterations")


@dataclass(frozen=True)
class Config(Message):
    """The stream: source size and rate, what is sent (every `temporal`-th frame ÷ `scale`) and how."""

    kind: ClassVar[str] = "config"
    width: int  # source (= output) frame size
    height: int
    low_width: int  # the low-res frames on the video track
    low_height: int
    fps: float  # source frame rate; the output has this rate
    scale: int
    temporal: int
    frames: int  # source frames in the stream
    codec: str  # "vp8" or "h264"
    kbps: float  # target bitrate of the video track
    ticks: int  # RTP 90 kHz ticks per source frame (frame identity, see protocol.timing)
    auth: str = ""  # HMAC-SHA256 tag (hex) with the shared secret, when the receiver's hello asked (nonce)
    # A live call (sender/closedloop.py): the sender runs the receiver's rebuild itself and sends a `modes`
    # message for every frame; the receiver shows what they say (codec.guard) and takes model updates.
    guard: bool = False
    # The video starts before the model has arrived (the receiver lacks it): the receiver answers at once
    # with a pending `ack`, shows the bicubic rebuild, takes the model chunks during the stream and switches
    # to the model at a key once it has verified it (then a plain `ack`).
    early: bool = False
    # Model bytes per ModelChunk (0: CHUNK_BYTES); at least MIN_CHUNK_BYTES. Every chunk but the last is this long.
    chunk_size: int = 0
    # The stream's shape (scale, temporal, plain) may change at keyframes as the link's rate moves; each change is
    # announced by a `shape` message naming the first source frame of the new shape (sender/shapes.py).
    shapes: bool = False
    # The sender probes the link with padding on the meta channel (`probe` messages) and the receiver times them
    # (`probe_result`): how a sender held low by a narrow spell finds out the link widened (sender/probe.py).
    probes: bool = False
    # The receiver reports how the video's packets arrive (transport feedback in RTCP, protocol/feedback.py): the
    # link's rate and its queue several times a second, rather than once per receiver report.
    feedback: bool = False
    limits: ClassVar[dict] = {
        "width": (1, MAX_SIDE), "height": (1, MAX_SIDE), "low_width": (1, MAX_SIDE), "low_height": (1, MAX_SIDE),
        "fps": (0.1, 1000.0), "scale": (1, 64), "temporal": (1, 64), "frames": (1, MAX_FRAMES),
        "kbps": (1.0, 100_000.0), "ticks": (90, 900_000), "auth": TAG_HEX, "chunk_size": (0, CHUNK_BYTES),
    }
    omit_empty: ClassVar[tuple[str, ...]] = ("auth", "guard", "early", "chunk_size", "shapes", "probes", "feedback")

    @property
    def model_chunk_bytes(self) -> int:
        """The model bytes in each chunk but the last."""
        return self.chunk_size or CHUNK_BYTES


@dataclass(frozen=True)
class ModelChunk(Message):
    kind: ClassVar[str] = "model_chunk"
    seq: int
    data: bytes
    limits: ClassVar[dict] = {"seq": (0, MAX_MODEL_BYTES // MIN_CHUNK_BYTES), "data": CHUNK_BYTES}


@dataclass(frozen=True)
class ModelDone(Message):
    kind: ClassVar[str] = "model_done"
    size: int
    sha256: str
    limits: ClassVar[dict] = {"size": (1, MAX_MODEL_BYTES), "sha256": SHA256_HEX}


@dataclass(frozen=True)
class Ack(Message):
    kind: ClassVar[str] = "ack"
    sha256: str
    pending: bool = False  # an early start (Config.early): ready for the video, the model still to come
    limits: ClassVar[dict] = {"sha256": SHA256_HEX}
    omit_empty: ClassVar[tuple[str, ...]] = ("pending",)


@dataclass(frozen=True)
class Frame(Message):
    kind: ClassVar[str] = "frame"
    index: int
    capture_time: float
    limits: ClassVar[dict] = {"index": (0, MAX_FRAMES), "capture_time": (0.0, 1e11)}


@dataclass(frozen=True)
class Modes(Message):
    """The guard's decision for consecutive source frames from `first` on: codec.guard.FrameModes bytes,
    one after another (a key and the in-betweens before it travel together). Reliable control channel: a
    lost decision would leave the receiver guessing."""

    kind: ClassVar[str] = "modes"
    first: int
    data: bytes
    limits: ClassVar[dict] = {"first": (0, MAX_FRAMES), "data": MAX_MODES_BYTES}


@dataclass(frozen=True)
class Shape(Message):
    """An adaptive stream's new shape (Config.shapes), from the keyframe of source frame `first` on: every
    `temporal`-th source frame ÷`scale` (`low_width` x `low_height` on the track), rebuilt by the model; or, with
    `plain`, the codec's own frames at full size (scale 1), shown as decoded. Reliable control channel, sent
    just before that keyframe; the receiver also tells a new shape by the decoded frame's size."""

    kind: ClassVar[str] = "shape"
    first: int
    scale: int
    temporal: int
    low_width: int
    low_height: int
    plain: bool = False
    # The video codec from this key on, where the sender may switch it (sender/payload.py): one of CODECS; empty:
    # the config's. The RTP payload type says it too; this is for the receiver's record.
    codec: str = ""
    limits: ClassVar[dict] = {"first": (0, MAX_FRAMES), "scale": (1, 64), "temporal": (1, 64),
                              "low_width": (1, MAX_SIDE), "low_height": (1, MAX_SIDE)}
    omit_empty: ClassVar[tuple[str, ...]] = ("codec",)


@dataclass(frozen=True)
class Probe(Message):
    """Padding message `seq` of the `count` in bandwidth probe `cluster` (Config.probes): sent evenly spaced on the
    unordered, unretransmitted meta channel, equal in size, timed at the receiver."""

    kind: ClassVar[str] = "probe"
    cluster: int
    seq: int
    count: int
    data: bytes
    limits: ClassVar[dict] = {"cluster": (0, MAX_PROBES), "seq": (0, MAX_PROBE_MESSAGES - 1), "count": (2, MAX_PROBE_MESSAGES),
                              "data": MAX_PROBE_BYTES}


@dataclass(frozen=True)
class ProbeResult(Message):
    """The receiver's timing of probe `cluster`: `received` of its messages arrived, the first and the last
    `span_us` microseconds apart (0 when fewer than two came); and (`counted`) every datagram the receiver's connection
    took in after the first and up to the last, the later messages' own included (`datagram_bytes`: UDP payloads).
    Through a full link all of them crossed the bottleneck in that span: the sender reads the link's rate from them
    (sender/probe.py)."""

    kind: ClassVar[str] = "probe_result"
    cluster: int
    received: int
    span_us: int
    counted: bool = False  # the receiver counts the datagrams in the span (the two below)
    datagrams: int = 0
    datagram_bytes: int = 0
    limits: ClassVar[dict] = {"cluster": (0, MAX_PROBES), "received": (0, MAX_PROBE_MESSAGES), "span_us": (0, 60_000_000),
                              "datagrams": (0, MAX_PROBE_ARRIVALS), "datagram_bytes": (0, MAX_PROBE_ARRIVAL_BYTES)}
    omit_empty: ClassVar[tuple[str, ...]] = ("counted", "datagrams", "datagram_bytes")


@dataclass(frozen=True)
class Update(Message):
    """One part of a live model update (codec.refresh wire bytes, verified whole by the receiver)."""

    kind: ClassVar[str] = "update"
    version: int  # the model version the update makes
    part: int
    parts: int
    data: bytes
    limits: ClassVar[dict] = {"version": (1, MAX_UPDATES), "part": (0, MAX_UPDATE_PARTS - 1), "parts": (1, MAX_UPDATE_PARTS),
                              "data": CHUNK_BYTES}


@dataclass(frozen=True)
class UpdateAck(Message):
    """The receiver's verdict on update `version`: applied (from the frame it names) or refused, and why."""

    kind: ClassVar[str] = "update_ack"
    version: int
    applied: bool
    reason: str = ""
    limits: ClassVar[dict] = {"version": (1, MAX_UPDATES)}


@dataclass(frozen=True)
class Keyframe(Message):
    kind: ClassVar[str] = "keyframe"


@dataclass(frozen=True)
class Error(Message):
    kind: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class Bye(Message):
    kind: ClassVar[str] = "bye"
    frames: int  # sender: source frames streamed; receiver: frames output
    video_bytes: int = 0  # sender: RTP payload bytes sent (getStats)
    video_packets: int = 0
    limits: ClassVar[dict] = {"frames": (0, MAX_FRAMES), "video_bytes": (0, 1 << 50), "video_packets": (0, 1 << 40)}


KINDS: dict[str, type[Message]] = {cls.kind: cls for cls in (Hello, Config, ModelChunk, ModelDone, Ack, Frame, Modes, Shape,
                                                                Probe, ProbeResult, Update, UpdateAck, Keyframe, Error, Bye)}
ROLES = ("sender", "receiver")
CODECS = ("vp8", "h264")


def _check_field(cls: type[Message], name: str, kind: type, value: object) -> object:
    where = f"{cls.kind}.{name}"
    if kind is bool:
        if not isinstance(value, bool):
            raise ProtocolError("bad_type", f"{where}: expected a bool, got {type(value).__name__}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError("bad_type", f"{where}: expected an integer, got {type(value).__name__}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError("bad_type", f"{where}: expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ProtocolError("bad_value", f"{where}: not a finite number")
    elif kind in (str, bytes):
        if not isinstance(value, kind):
            raise ProtocolError("bad_type", f"{where}: expected {kind.__name__}, got {type(value).__name__}")
        limit = cls.limits.get(name, MAX_TEXT)
        if len(value) > limit:
            raise ProtocolError("too_large", f"{where}: {len(value)} long, at most {limit}")
    bounds = cls.limits.get(name)
    if isinstance(bounds, tuple) and not bounds[0] <= value <= bounds[1]:
        raise ProtocolError("bad_value", f"{where}: {value!r} outside [{bounds[0]}, {bounds[1]}]")
    return value


_TYPES = {"int": int, "float": float, "str": str, "bytes": bytes, "bool": bool}


def _validate(cls: type[Message], fields: dict) -> Message:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(fields) - set(known)
    if unknown:
        raise ProtocolError("bad_field", f"{cls.kind}: unknown field {sorted(map(str, unknown))[0]!r}")
    values = {}
    for name, f in known.items():
        if name not in fields:
            if f.default is dataclasses.MISSING:
                raise ProtocolError("missing_field", f"{cls.kind}: missing field {name!r}")
            continue
        values[name] = _check_field(cls, name, _TYPES[f.type], fields[name])
    message = cls(**values)
    if isinstance(message, Hello) and message.role not in ROLES:
        raise ProtocolError("bad_value", f"hello.role: expected one of {ROLES}, got {message.role!r}")
    if isinstance(message, Hello) and message.model_sha256 and not _is_sha256(message.model_sha256):
        raise ProtocolError("bad_value", "hello.model_sha256: not a SHA-256 hex digest")
    if isinstance(message, Hello) and message.nonce and not _is_hex(message.nonce, NONCE_HEX):
        raise ProtocolError("bad_value", f"hello.nonce: not {NONCE_HEX} lowercase hex digits")
    if isinstance(message, Config) and message.auth and not _is_hex(message.auth, TAG_HEX):
        raise ProtocolError("bad_value", f"config.auth: not {TAG_HEX} lowercase hex digits")
    if isinstance(message, (ModelDone, Ack)) and not _is_sha256(message.sha256):
        raise ProtocolError("bad_value", f"{cls.kind}.sha256: not a SHA-256 hex digest")
    if isinstance(message, Update) and message.part >= message.parts:
        raise ProtocolError("bad_value", f"update.part: {message.part} of {message.parts} parts")
    if isinstance(message, Config) and 0 < message.chunk_size < MIN_CHUNK_BYTES:
        raise ProtocolError("bad_value", f"config.chunk_size: {message.chunk_size} under {MIN_CHUNK_BYTES} bytes")
    if isinstance(message, Probe) and message.seq >= message.count:
        raise ProtocolError("bad_value", f"probe.seq: {message.seq} of {message.count} messages")
    if isinstance(message, Shape) and message.plain and message.scale != 1:
        raise ProtocolError("bad_value", f"shape.plain: a plain shape is full size (scale 1), got scale {message.scale}")
    if isinstance(message, Shape) and message.codec and message.codec not in CODECS:
        raise ProtocolError("bad_value", f"shape.codec: expected one of {CODECS}, got {message.codec!r}")
    if isinstance(message, Config) and message.codec not in CODECS:
        raise ProtocolError("bad_value", f"config.codec: expected one of {CODECS}, got {message.codec!r}")
    return message


def _is_sha256(text: str) -> bool:
    return _is_hex(text, SHA256_HEX)


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def encode(message: Message) -> bytes:
    """Serialize a message (validated first, so we never send what we would refuse)."""
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    _validate(type(message), fields)
    wire = {name: value for name, value in fields.items() if not (name in message.omit_empty and value in ("", 0))}
    return msgpack.packb({"v": VERSION, "kind": message.kind, **wire}, use_bin_type=True)


def decode(data: bytes | str) -> Message:
    """Parse and validate one message from a peer; raises only ProtocolError."""
    if isinstance(data, str):
        raise ProtocolError("bad_encoding", "text message; vsae messages are binary msgpack")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_encoding", f"unexpected payload type {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {size} bytes, at most {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(
            bytes(data), raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_MESSAGE_BYTES, max_bin_len=MAX_MESSAGE_BYTES,
            max_array_len=64, max_map_len=32, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types (ExtraData, StackError, ValueError, ...)
        raise ProtocolError("bad_encoding", f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_encoding", f"expected a map, got {type(obj).__name__}")
    version = obj.pop("v", None)
    if type(version) is not int or version != VERSION:  # True and 1.0 compare equal to 1
        raise ProtocolError("version", f"protocol version {version!r}, this side speaks {VERSION}")
    kind = obj.pop("kind", None)
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("unknown_kind", f"unknown message kind {str(kind)[:40]!r}")
    return _validate(cls, obj)
