"""The wire protocol: every kind round-trips, and a peer's bad bytes only ever raise ProtocolError.

`decode` is the trust boundary of a session: whatever arrives on the data channel goes through it, so
each malformed case below checks the exact `code` that goes back to the peer, and the fuzzers check
that nothing but a Message or a ProtocolError ever comes out of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import msgpack
import pytest
from fuzzing import LONG, FUZZ_EXAMPLES, Tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.messages import (
    CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    CODECS,
    KINDS,
    MAX_FRAMES,
    MAX_MESSAGE_BYTES,
    MAX_MODEL_BYTES,
    MAX_SIDE,
    MAX_TEXT,
    NONCE_HEX,
    ROLES,
    SHA256_HEX,
    TAG_HEX,
    VERSION,
    Ack,
    Bye,
    Config,
    Error,
    Frame,
    Hello,
    Keyframe,
    Message,
    ModelChunk,
    ModelDone,
    Modes,
    Probe,
    ProbeResult,
    ProtocolError,
    Shape,
    Update,
    UpdateAck,
    decode,
    encode,
)

CODES = {"bad_encoding", "version", "unknown_kind", "bad_field", "missing_field", "bad_type", "bad_value", "too_large"}
SHA = hashlib.sha256(b"a tiny carphone model").hexdigest()
NONCE = "0123456789abcdef" * 2
TAG = hashlib.sha256(b"an HMAC-SHA256 tag").hexdigest()
# Deterministic, incompressible-looking model bytes: exactly one full chunk.
CHUNK = (hashlib.sha256(b"chunk").digest() * (CHUNK_BYTES // 32 + 1))[:CHUNK_BYTES]

CONFIG = dict(
    width=176, height=144, low_width=88, low_height=72, fps=30.0, scale=2, temporal=2, frames=300,
    codec="vp8", kbps=250.0, ticks=3000,
)

VALID: list[Message] = [
    Hello(role="sender", software="vsae 0.1.0", model_sha256=SHA, model_bytes=1_234_567),
    Hello(role="receiver", have_model=True),
    Hello(role="receiver"),
    Hello(role="receiver", have_model=True, nonce=NONCE),
    Hello(role="receiver", model_offset=3 * CHUNK_BYTES),
    Config(**CONFIG),
    Config(**CONFIG, auth=TAG),
    Config(**{**CONFIG, "codec": "h264", "width": 1920, "height": 1080, "low_width": 480, "low_height": 270,
              "scale": 4, "temporal": 1, "fps": 29.97, "kbps": 2500.5, "ticks": 3003}),
    ModelChunk(seq=0, data=b"\x00\x01\x02"),
    ModelChunk(seq=75, data=CHUNK),
    ModelChunk(seq=76, data=b""),
    ModelDone(size=1_234_567, sha256=SHA),
    Ack(sha256=SHA),
    Frame(index=0, capture_time=0.0),
    Frame(index=42, capture_time=1_700_000_001.4),
    Keyframe(),
    Hello(role="receiver", rebuild_method="motion", rebuild_iterations=1),
    Config(**CONFIG, guard=True),
    Modes(first=0, data=b"\x00\x01"),
    Modes(first=1_000, data=b"\x0b\x03\x02"),
    Config(**CONFIG, shapes=True),
    Shape(first=40, scale=8, temporal=4, low_width=22, low_height=18),
    Shape(first=41, scale=1, temporal=1, low_width=176, low_height=144, plain=True),
    Config(**CONFIG, probes=True),
    Probe(cluster=0, seq=0, count=5, data=bytes(400)),
    Probe(cluster=7, seq=4, count=5, data=b""),
    ProbeResult(cluster=7, received=5, span_us=412_000),
    Update(version=1, part=0, parts=1, data=b"\x89VSUP"),
    Update(version=7, part=3, parts=4, data=CHUNK),
    UpdateAck(version=1, applied=True),
    UpdateAck(version=2, applied=False, reason="model update checksum mismatch"),
    Error(code="bad_field", message="frame: unknown field 'extra'"),
    Error(code="", message="ünïcödé ✓ 🎥"),
    Bye(frames=300, video_bytes=1_500_000, video_packets=1_400),
    Bye(frames=150),
]
ENCODED = [encode(m) for m in VALID]


def pack(kind: object = None, v: object = VERSION, **fields: object) -> bytes:
    """A raw message map; `kind=None` / `v=None` leave the key out."""
    obj: dict = {}
    if v is not None:
        obj["v"] = v
    if kind is not None:
        obj["kind"] = kind
    obj.update(fields)
    return msgpack.packb(obj, use_bin_type=True)


def refused(data: object) -> str:
    """The code decode gives `data`; fails the test if it is accepted or raises anything else."""
    with pytest.raises(ProtocolError) as info:
        decode(data)  # type: ignore[arg-type]
    assert info.value.code in CODES
    assert str(info.value)  # a human-readable reason goes along with the code
    return info.value.code


def fields_of(message: Message) -> dict:
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}


def wire_fields(message: Message) -> dict:
    """The fields on the wire: all of them but empty version-1 additions (`omit_empty`)."""
    return {k: v for k, v in fields_of(message).items() if not (k in message.omit_empty and v in ("", 0))}


# ---------------------------------------------------------------------------------------------------
# Round trips


def test_valid_set_covers_every_kind():
    assert {type(m) for m in VALID} == set(KINDS.values())
    assert all(KINDS[cls.kind] is cls for cls in KINDS.values())
    assert len(set(KINDS)) == len(KINDS) == 15


@pytest.mark.parametrize("message", VALID, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message):
    data = encode(message)
    assert isinstance(data, bytes)
    assert len(data) <= MAX_MESSAGE_BYTES
    back = decode(data)
    assert type(back) is type(message)
    assert back == message
    # Encoding is deterministic, and the wire form is the documented map.
    assert encode(back) == data
    assert msgpack.unpackb(data, raw=False) == {"v": VERSION, "kind": message.kind, **wire_fields(message)}


# The fields each kind had before any version-1 addition: what an older peer accepts.
ORIGINAL_FIELDS = {
    "hello": {"role", "software", "model_sha256", "model_bytes", "have_model"},
    "config": {"width", "height", "low_width", "low_height", "fps", "scale", "temporal", "frames", "codec", "kbps", "ticks"},
}


@pytest.mark.parametrize("message", [m for m in VALID if m.kind in ORIGINAL_FIELDS], ids=lambda m: type(m).__name__)
def test_version_one_additions_stay_off_the_wire_while_empty(message: Message):
    # A session without a shared secret sends exactly what a peer that predates the auth fields decodes.
    wire = set(msgpack.unpackb(encode(message), raw=False)) - {"v", "kind"}
    added = set(message.omit_empty)
    assert added and not added & ORIGINAL_FIELDS[message.kind]
    if all(getattr(message, name) in ("", 0) for name in added):
        assert wire == ORIGINAL_FIELDS[message.kind]
    else:
        assert wire - ORIGINAL_FIELDS[message.kind] == {n for n in added if getattr(message, n)}


def test_empty_optional_fields_on_the_wire_are_accepted():
    # Sent explicitly empty (e.g. by another implementation), they mean the same as absent.
    assert decode(pack("hello", role="receiver", nonce="")) == Hello(role="receiver")
    assert decode(pack("hello", role="receiver", model_offset=0)) == Hello(role="receiver")
    assert decode(pack("config", **CONFIG, auth="")) == Config(**CONFIG)


def test_round_trip_accepts_bytes_like_payloads():
    data = encode(Frame(index=7, capture_time=12.5))
    assert decode(bytearray(data)) == Frame(index=7, capture_time=12.5)
    assert decode(memoryview(data)) == Frame(index=7, capture_time=12.5)


def test_full_model_chunk_fits_in_one_message():
    # The largest seq the protocol allows, with a full chunk: still within the message cap.
    seq_max = ModelChunk.limits["seq"][1]
    for seq in (0, seq_max):
        message = ModelChunk(seq=seq, data=CHUNK)
        assert len(message.data) == CHUNK_BYTES
        data = encode(message)
        assert len(data) <= MAX_MESSAGE_BYTES
        assert decode(data) == message
    # And the whole model fits in the allowed seq range.
    assert (seq_max + 1) * CHUNK_BYTES >= MAX_MODEL_BYTES


def test_integer_for_float_field_decodes_as_float():
    message = decode(pack("frame", index=3, capture_time=5))
    assert message == Frame(index=3, capture_time=5.0)
    assert type(message.capture_time) is float
    config = decode(pack("config", **{**CONFIG, "fps": 25, "kbps": 300}))
    assert all(type(getattr(config, name)) is float for name in ("fps", "kbps"))


def test_optional_fields_take_defaults():
    assert decode(pack("hello", role="receiver")) == Hello(role="receiver", software="vsae", model_sha256="",
                                                           model_bytes=0, have_model=False)
    assert decode(pack("bye", frames=9)) == Bye(frames=9, video_bytes=0, video_packets=0)


@pytest.mark.parametrize("kind, fields", [
    ("frame", {"index": MAX_FRAMES, "capture_time": 1e11}),
    ("config", {**CONFIG, "width": MAX_SIDE, "height": 1, "fps": 0.1, "kbps": 100_000.0, "ticks": 90,
                "scale": 64, "temporal": 64, "frames": MAX_FRAMES}),
    ("config", {**CONFIG, "fps": 1000.0, "ticks": 900_000, "low_width": MAX_SIDE, "low_height": 1}),
    ("hello", {"role": "sender", "model_bytes": MAX_MODEL_BYTES, "model_sha256": SHA}),
    ("hello", {"role": "receiver", "nonce": "f" * NONCE_HEX}),
    ("config", {**CONFIG, "auth": "0" * TAG_HEX}),
    ("model_done", {"size": 1, "sha256": SHA}),
    ("model_done", {"size": MAX_MODEL_BYTES, "sha256": SHA}),
    ("error", {"code": "c" * MAX_TEXT, "message": "m" * MAX_TEXT}),
    ("bye", {"frames": 0, "video_bytes": 1 << 50, "video_packets": 1 << 40}),
])
def test_limits_are_inclusive(kind, fields):
    message = decode(pack(kind, **fields))
    assert type(message) is KINDS[kind]
    assert decode(encode(message)) == message


# ---------------------------------------------------------------------------------------------------
# Malformed input, each with its code


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",  # the one never-used msgpack byte
    b"\x81",  # a map header with nothing after it
    b"\x82\xa1v\x01",  # a map cut short
    b"hello world",  # an int (0x68) followed by extra data
    b"\xff" * 32,
    ENCODED[0] + b"\x00",  # a valid message plus trailing bytes
    ENCODED[0][:-1],
    b"\x91" * 5000,  # arrays nested 5000 deep
    b"\x81\xa1x" * 3000 + b"\xc0",  # maps nested 3000 deep
    msgpack.packb({1: "v"}),  # non-string map key
    msgpack.packb({"v": 1, "kind": "error", "code": b"\xff\xfe", "message": "x"}).replace(b"\xc4\x02", b"\xa2"),  # invalid UTF-8
    msgpack.packb({"v": 1, "kind": "keyframe", "x": list(range(65))}),  # array over the length cap
    msgpack.packb({f"k{i}": i for i in range(33)}),  # map over the length cap
    msgpack.packb({"v": 1, "kind": "keyframe", "x": msgpack.ExtType(1, b"abc")}),  # ext types are refused
])
def test_bad_encoding(data):
    assert refused(data) == "bad_encoding"


def test_invalid_utf8_case_is_really_invalid_utf8():
    # Guard the hand-made case above: the str header now frames two non-UTF-8 bytes.
    data = msgpack.packb({"v": 1, "kind": "error", "code": b"\xff\xfe", "message": "x"}).replace(b"\xc4\x02", b"\xa2")
    assert b"\xa2\xff\xfe" in data
    with pytest.raises(UnicodeDecodeError):
        msgpack.unpackb(data, raw=False)


@pytest.mark.parametrize("obj", [
    [1, "frame", 3, 1.0],
    ["v", 1, "kind", "keyframe"],
    None,
    7,
    1.5,
    "keyframe",
    b"\x80",
    True,
])
def test_non_map_message(obj):
    assert refused(msgpack.packb(obj, use_bin_type=True)) == "bad_encoding"


@pytest.mark.parametrize("payload", ["", "{}", '{"v": 1, "kind": "keyframe"}', "\x81\xa1v\x01"])
def test_text_payload(payload):
    assert refused(payload) == "bad_encoding"


@pytest.mark.parametrize("payload", [None, 12, 1.0, [], {"v": 1, "kind": "keyframe"}, object()])
def test_non_bytes_payload(payload):
    assert refused(payload) == "bad_encoding"


@pytest.mark.parametrize("version", [None, 0, 2, -1, 1 << 40, "1", b"\x01", [1], {"v": 1}, 1.5])
def test_version_mismatch(version):
    # None = the "v" key left out entirely.
    assert refused(pack("keyframe", v=version)) == "version"


def test_version_is_checked_before_anything_else():
    assert refused(pack("no_such_kind", v=2, junk=1)) == "version"
    assert refused(msgpack.packb({"kind": "frame", "index": "x"})) == "version"


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_one(version):
    assert refused(pack("keyframe", v=version)) == "version"


@pytest.mark.parametrize("kind", [None, "", "nope", "Hello", "HELLO", "frame ", b"frame", 1, True, ["frame"], {"k": 1}])
def test_unknown_kind(kind):
    # None = the "kind" key left out entirely.
    assert refused(pack(kind, index=1, capture_time=1.0)) == "unknown_kind"


@pytest.mark.parametrize("kind, fields", [
    ("keyframe", {"x": 1}),
    ("frame", {"index": 1, "capture_time": 1.0, "extra": None}),
    ("ack", {"sha256": SHA, "sha": SHA}),
    ("hello", {"role": "sender", "kind2": "x"}),
    ("config", {**CONFIG, "bitrate": 5}),
    ("bye", {"frames": 1, "Frames": 1}),
])
def test_unknown_field(kind, fields):
    assert refused(pack(kind, **fields)) == "bad_field"


def test_unknown_bytes_key_is_bad_field():
    data = msgpack.packb({"v": 1, "kind": "frame", "index": 1, "capture_time": 1.0, b"index": 2}, use_bin_type=True)
    assert refused(data) == "bad_field"


@pytest.mark.parametrize("kind, fields", [
    ("hello", {}),
    ("hello", {"software": "vsae", "have_model": True}),
    ("config", {k: v for k, v in CONFIG.items() if k != "codec"}),
    ("config", {k: v for k, v in CONFIG.items() if k != "ticks"}),
    ("model_chunk", {"seq": 1}),
    ("model_chunk", {"data": b"x"}),
    ("model_done", {"sha256": SHA}),
    ("ack", {}),
    ("frame", {"index": 1}),
    ("frame", {"capture_time": 1.0}),
    ("error", {"code": "x"}),
    ("bye", {"video_bytes": 5}),
])
def test_missing_field(kind, fields):
    assert refused(pack(kind, **fields)) == "missing_field"


@pytest.mark.parametrize("kind, fields", [
    ("frame", {"index": True, "capture_time": 1.0}),  # bool where int
    ("frame", {"index": 1.0, "capture_time": 1.0}),  # float where int
    ("frame", {"index": "1", "capture_time": 1.0}),  # str where int
    ("frame", {"index": None, "capture_time": 1.0}),  # nil where int
    ("frame", {"index": 1, "capture_time": True}),  # bool where float
    ("frame", {"index": 1, "capture_time": "1.0"}),  # str where float
    ("frame", {"index": 1, "capture_time": [1.0]}),  # array where float
    ("model_chunk", {"seq": 0, "data": "abc"}),  # str where bytes
    ("model_chunk", {"seq": 0, "data": [1, 2, 3]}),  # array where bytes
    ("model_chunk", {"seq": False, "data": b"abc"}),  # bool where int
    ("error", {"code": 1, "message": "x"}),  # int where str
    ("error", {"code": "x", "message": b"x"}),  # bytes where str
    ("ack", {"sha256": SHA.encode()}),  # bytes where str
    ("hello", {"role": "receiver", "have_model": 1}),  # int where bool
    ("hello", {"role": "receiver", "have_model": "yes"}),  # str where bool
    ("hello", {"role": 0}),  # int where str
    ("hello", {"role": "receiver", "nonce": NONCE.encode()}),  # bytes where str
    ("hello", {"role": "receiver", "nonce": None}),  # nil where str
    ("config", {**CONFIG, "auth": bytes.fromhex(TAG)}),  # raw bytes where hex str
    ("config", {**CONFIG, "auth": 0}),  # int where str
    ("config", {**CONFIG, "codec": None}),  # nil where str
    ("config", {**CONFIG, "width": 176.0}),  # float where int
    ("bye", {"frames": {"n": 1}}),  # map where int
])
def test_wrong_type(kind, fields):
    assert refused(pack(kind, **fields)) == "bad_type"


@pytest.mark.parametrize("kind, fields", [
    ("frame", {"index": -1, "capture_time": 1.0}),
    ("frame", {"index": MAX_FRAMES + 1, "capture_time": 1.0}),
    ("frame", {"index": 1, "capture_time": -0.5}),
    ("frame", {"index": 1, "capture_time": 1e11 * 1.0001}),
    ("frame", {"index": 1, "capture_time": math.nan}),
    ("frame", {"index": 1, "capture_time": math.inf}),
    ("frame", {"index": 1, "capture_time": -math.inf}),
    ("config", {**CONFIG, "fps": math.nan}),
    ("config", {**CONFIG, "kbps": math.inf}),
    ("config", {**CONFIG, "fps": 0.0}),
    ("config", {**CONFIG, "fps": 1000.5}),
    ("config", {**CONFIG, "width": 0}),
    ("config", {**CONFIG, "height": MAX_SIDE + 1}),
    ("config", {**CONFIG, "low_width": -176}),
    ("config", {**CONFIG, "scale": 65}),
    ("config", {**CONFIG, "temporal": 0}),
    ("config", {**CONFIG, "frames": 0}),
    ("config", {**CONFIG, "kbps": 0.5}),
    ("config", {**CONFIG, "ticks": 89}),
    ("config", {**CONFIG, "fps": 0.05}),
    ("hello", {"role": "sender", "model_bytes": MAX_MODEL_BYTES + 1}),
    ("hello", {"role": "sender", "model_bytes": -1}),
    ("model_chunk", {"seq": -1, "data": b"x"}),
    ("model_chunk", {"seq": MAX_MODEL_BYTES // 1024 + 1, "data": b"x"}),
    ("model_done", {"size": 0, "sha256": SHA}),
    ("model_done", {"size": MAX_MODEL_BYTES + 1, "sha256": SHA}),
    ("bye", {"frames": -1}),
    ("bye", {"frames": 1, "video_bytes": (1 << 50) + 1}),
    ("bye", {"frames": 1, "video_packets": 2**64 - 1}),
])
def test_out_of_range(kind, fields):
    assert refused(pack(kind, **fields)) == "bad_value"


@pytest.mark.parametrize("digest", [
    "",
    SHA.upper(),
    SHA[:-1],  # 63 characters
    "g" * SHA256_HEX,
    " " + SHA[1:],
    SHA[:-1] + "\u0661",  # a non-ASCII digit
    "0x" + SHA[2:],
])
def test_bad_sha256(digest):
    assert refused(pack("ack", sha256=digest)) == "bad_value"
    assert refused(pack("model_done", size=10, sha256=digest)) == "bad_value"
    if digest:  # an empty model_sha256 is how a receiver's Hello says "no model"
        assert refused(pack("hello", role="sender", model_sha256=digest, model_bytes=10)) == "bad_value"


def test_overlong_sha256_is_too_large():
    assert refused(pack("ack", sha256=SHA + "0")) == "too_large"
    # Hello.model_sha256 is capped like any text: longer than a digest is a bad value, past MAX_TEXT too large.
    assert refused(pack("hello", role="sender", model_sha256=SHA * 2)) == "bad_value"
    assert refused(pack("hello", role="sender", model_sha256="a" * (MAX_TEXT + 1))) == "too_large"


def test_model_offset_must_be_in_range():
    # Any count of bytes held: the sender resumes at offset // its chunk size (Config.chunk_size), and the
    # receiver keeps that many whole chunks of it.
    assert decode(pack("hello", role="receiver", model_offset=CHUNK_BYTES + 1)).model_offset == CHUNK_BYTES + 1
    assert refused(pack("hello", role="receiver", model_offset=-CHUNK_BYTES)) == "bad_value"
    assert refused(pack("hello", role="receiver", model_offset=True)) == "bad_type"
    assert decode(pack("hello", role="receiver", model_offset=2 * CHUNK_BYTES)).model_offset == 2 * CHUNK_BYTES


@pytest.mark.parametrize("nonce", [
    NONCE.upper(),
    NONCE[:-1],  # 31 characters
    "g" * NONCE_HEX,
    " " + NONCE[1:],
    NONCE[:-1] + "\u0661",  # a non-ASCII digit
    "0x" + NONCE[2:],
])
def test_bad_nonce(nonce):
    assert refused(pack("hello", role="receiver", nonce=nonce)) == "bad_value"


@pytest.mark.parametrize("tag", [TAG.upper(), TAG[:-1], "g" * TAG_HEX, TAG[:-1] + "\u0661", "0x" + TAG[2:], TAG[:32]])
def test_bad_auth_tag(tag):
    assert refused(pack("config", **CONFIG, auth=tag)) == "bad_value"


def test_overlong_nonce_and_tag_are_too_large():
    assert refused(pack("hello", role="receiver", nonce=NONCE + "0")) == "too_large"
    assert refused(pack("config", **CONFIG, auth=TAG + "0")) == "too_large"
    assert refused(pack("config", **CONFIG, auth="a" * 10_000)) == "too_large"


@pytest.mark.parametrize("role", ["", "server", "Sender", "RECEIVER", "sender ", "peer"])
def test_bad_role(role):
    assert role not in ROLES
    assert refused(pack("hello", role=role)) == "bad_value"


@pytest.mark.parametrize("codec", ["", "av1", "VP8", "H264", "vp9", "h265", "vp8\x00"])
def test_bad_codec(codec):
    assert codec not in CODECS
    assert refused(pack("config", **{**CONFIG, "codec": codec})) == "bad_value"


@pytest.mark.parametrize("kind, fields", [
    ("error", {"code": "x", "message": "m" * (MAX_TEXT + 1)}),
    ("error", {"code": "c" * (MAX_TEXT + 1), "message": ""}),
    ("error", {"code": "x", "message": "é" * (MAX_TEXT + 1)}),
    ("hello", {"role": "sender", "software": "v" * (MAX_TEXT + 1)}),
    ("config", {**CONFIG, "codec": "vp8" * 100}),
    ("model_chunk", {"seq": 0, "data": b"\x00" * (CHUNK_BYTES + 1)}),
])
def test_oversized_field(kind, fields):
    assert len(pack(kind, **fields)) <= MAX_MESSAGE_BYTES  # the field cap, not the message cap, refuses it
    assert refused(pack(kind, **fields)) == "too_large"


@pytest.mark.parametrize("data", [
    pack("model_chunk", seq=0, data=b"\x00" * MAX_MESSAGE_BYTES),
    pack("error", code="x", message="m" * 20_000),
    b"\x00" * (MAX_MESSAGE_BYTES + 1),  # the size is checked before any parsing
    b"\xc1" * (1 << 20),
])
def test_oversized_message(data):
    assert len(data) > MAX_MESSAGE_BYTES
    assert refused(data) == "too_large"
    assert refused(bytearray(data)) == "too_large"


# ---------------------------------------------------------------------------------------------------
# encode refuses what decode would refuse


@pytest.mark.parametrize("message, code", [
    (Hello(role="server"), "bad_value"),
    (Hello(role="sender", model_sha256="abc"), "bad_value"),
    (Hello(role="sender", model_bytes=-1), "bad_value"),
    (Hello(role="receiver", have_model=1), "bad_type"),  # type: ignore[arg-type]
    (Hello(role="receiver", nonce="xyz"), "bad_value"),
    (Hello(role="receiver", nonce=None), "bad_type"),  # type: ignore[arg-type]
    (Config(**{**CONFIG, "auth": TAG.upper()}), "bad_value"),
    (Config(**{**CONFIG, "auth": TAG + "0"}), "too_large"),
    (Config(**{**CONFIG, "codec": "av1"}), "bad_value"),
    (Config(**{**CONFIG, "fps": math.nan}), "bad_value"),
    (Config(**{**CONFIG, "width": 0}), "bad_value"),
    (Config(**{**CONFIG, "scale": 2.0}), "bad_type"),  # type: ignore[arg-type]
    (ModelChunk(seq=0, data=CHUNK + b"x"), "too_large"),
    (ModelChunk(seq=0, data="text"), "bad_type"),  # type: ignore[arg-type]
    (ModelChunk(seq=0, data=bytearray(b"x")), "bad_type"),  # type: ignore[arg-type]
    (ModelDone(size=0, sha256=SHA), "bad_value"),
    (ModelDone(size=10, sha256=SHA.upper()), "bad_value"),
    (Ack(sha256=""), "bad_value"),
    (Frame(index=-1, capture_time=1.0), "bad_value"),
    (Frame(index=1, capture_time=math.inf), "bad_value"),
    (Frame(index=True, capture_time=1.0), "bad_type"),  # type: ignore[arg-type]
    (Error(code="x", message="m" * (MAX_TEXT + 1)), "too_large"),
    (Error(code=None, message="m"), "bad_type"),  # type: ignore[arg-type]
    (Bye(frames=MAX_FRAMES + 1), "bad_value"),
])
def test_encode_refuses_invalid(message, code):
    with pytest.raises(ProtocolError) as info:
        encode(message)
    assert info.value.code == code


# ---------------------------------------------------------------------------------------------------
# Fuzzing: decode returns a Message or raises ProtocolError, nothing else
#
# Each strategy draws a list of payloads. The CI tests run 200 examples of each; test_fuzz_long (-m slow,
# see tests/fuzzing.py) runs VSAE_FUZZ_EXAMPLES of each with per-call time and memory bounds and counts.

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_decode(data: object) -> Message | ProtocolError:
    try:
        message = decode(data)  # type: ignore[arg-type]
    except ProtocolError as exc:
        assert exc.code in CODES, exc.code
        return exc
    assert isinstance(message, Message)
    assert type(message) in KINDS.values()
    # Whatever we accept from a peer we could also send: encode validates it the same way.
    assert decode(encode(message)) == message
    return message


RANDOM_BYTES = st.binary(max_size=512).map(lambda b: [b])
# Random bytes that at least start as a msgpack map, to get past the first check more often.
MAP_LIKE_BYTES = (st.binary(min_size=1, max_size=64).map(lambda b: b"\x80" + b)
                  | st.binary(min_size=1, max_size=64).map(lambda b: bytes([0x80 | (b[0] & 0x0F)]) + b[1:])).map(lambda b: [b])


@st.composite
def truncations_and_bit_flips(draw) -> list[bytes]:
    data = draw(st.sampled_from(ENCODED))
    cut = draw(st.integers(0, len(data) - 1), label="cut")
    position = draw(st.integers(0, len(data) - 1), label="position")
    bit = draw(st.integers(0, 7), label="bit")
    flipped = bytearray(data)
    flipped[position] ^= 1 << bit
    return [data[:cut], bytes(flipped), bytes(flipped[:cut])]


FIELD_NAMES = sorted({f.name for cls in KINDS.values() for f in dataclasses.fields(cls)})
# Values a valid message would carry, so that some fuzzed maps get deep into validation.
PLAUSIBLE = st.sampled_from([
    *ROLES, *CODECS, SHA, NONCE, TAG, "", "vsae", b"", CHUNK[:100], 0, 1, 30, 3000, 176, MAX_FRAMES, MAX_SIDE,
    0.0, 30.0, 1e11, True, False, None,
])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.binary(max_size=300)
    | PLAUSIBLE
)
MSGPACK_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=12,
)


@st.composite
def valid_looking_maps(draw) -> list[bytes]:
    # {"v": 1, "kind": kind} plus random values under mostly that kind's own field names (so that some
    # maps get past the field-name check into type and range validation) and sometimes random keys.
    kind = draw(st.sampled_from(sorted(KINDS)))
    own = [f.name for f in dataclasses.fields(KINDS[kind])]
    keys = st.sampled_from(own) if own else st.sampled_from(FIELD_NAMES)
    fields = draw(st.dictionaries(keys, PLAUSIBLE | MSGPACK_VALUES, max_size=len(own)), label="fields")
    extra = draw(st.just({}) | st.just({}) | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=12),
                                                             MSGPACK_VALUES, min_size=1, max_size=3), label="extra")
    obj = {**extra, **fields, "v": 1, "kind": kind}
    return [msgpack.packb(obj, use_bin_type=True)]


@st.composite
def one_field_replaced(draw) -> list[bytes]:
    # A valid message with one field (or an extra key) swapped for a random msgpack value.
    message = draw(st.sampled_from(VALID))
    obj = {"v": 1, "kind": message.kind, **fields_of(message)}
    key = draw(st.sampled_from(sorted(obj)) | st.sampled_from(FIELD_NAMES), label="key")
    obj[key] = draw(MSGPACK_VALUES, label="value")
    return [msgpack.packb(obj, use_bin_type=True)]


# msgpack headers that declare a length (byte, length width): bin, str, array, map and ext of 8/16/32 bits.
LENGTH_HEADERS = [(0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4), (0xDC, 2), (0xDD, 4),
                  (0xDE, 2), (0xDF, 4), (0xC7, 1), (0xC8, 2), (0xC9, 4)]


@st.composite
def huge_declared_sizes(draw) -> list[bytes]:
    """A length header (anywhere up to 2**32 - 1, often near the top) with little or no data after it,
    alone or as a field value inside an otherwise valid message."""
    byte, width = draw(st.sampled_from(LENGTH_HEADERS))
    top = 2 ** (8 * width) - 1
    length = draw(st.integers(0, top) | st.integers(max(0, top - 64), top) | st.sampled_from([MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1]))
    header = bytes([byte]) + min(length, top).to_bytes(width, "big") + (b"\x01" if 0xC7 <= byte <= 0xC9 else b"")
    tail = draw(st.binary(max_size=64))
    message = draw(st.sampled_from(VALID))
    obj = {"v": 1, "kind": message.kind, **fields_of(message)}
    key = draw(st.sampled_from(sorted(obj)))
    before = {k: v for k, v in obj.items() if k != key}
    inside = bytes([0x80 | len(obj)])  # a fixmap header: every kind has at most 15 keys
    inside += b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in before.items())
    inside += msgpack.packb(key) + header + tail
    return [header + tail, inside]


@st.composite
def deep_nesting(draw) -> list[bytes]:
    """Arrays and maps nested up to past the message size cap, alone or as a field of a valid message."""
    depth = draw(st.integers(1, 64) | st.integers(1, MAX_MESSAGE_BYTES + 16))
    openers = draw(st.lists(st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"\xde\x00\x01\xa1k"]), min_size=1, max_size=4))
    leaf = draw(st.sampled_from([b"\xc0", b"\x01", b"\xa0", b"", b"\xc1"]))
    nested = b"".join(openers[i % len(openers)] for i in range(depth)) + leaf
    field = draw(st.sampled_from(FIELD_NAMES))
    wrapped = b"\x83" + msgpack.packb("v") + b"\x01" + msgpack.packb("kind") + msgpack.packb(draw(st.sampled_from(sorted(KINDS)))) + msgpack.packb(field) + nested
    return [nested, wrapped]


FUZZERS = {
    "random_bytes": RANDOM_BYTES,
    "map_like_bytes": MAP_LIKE_BYTES,
    "truncations_and_bit_flips": truncations_and_bit_flips(),
    "valid_looking_maps": valid_looking_maps(),
    "one_field_replaced": one_field_replaced(),
    "huge_declared_sizes": huge_declared_sizes(),
    "deep_nesting": deep_nesting(),
}


@FUZZ
@given(RANDOM_BYTES)
def test_fuzz_random_bytes(payloads):
    for data in payloads:
        check_decode(data)


@FUZZ
@given(MAP_LIKE_BYTES)
def test_fuzz_random_map_like_bytes(payloads):
    for data in payloads:
        check_decode(data)


@FUZZ
@given(truncations_and_bit_flips())
def test_fuzz_truncation_and_bit_flips(payloads):
    for data in payloads:
        check_decode(data)


@FUZZ
@given(valid_looking_maps())
def test_fuzz_valid_looking_maps(payloads):
    for data in payloads:
        check_decode(data)


@FUZZ
@given(one_field_replaced())
def test_fuzz_one_field_replaced(payloads):
    for data in payloads:
        check_decode(data)


@FUZZ
@given(huge_declared_sizes())
def test_fuzz_huge_declared_sizes(payloads):
    for data in payloads:
        check_decode(data)


@FUZZ
@given(deep_nesting())
def test_fuzz_deep_nesting(payloads):
    for data in payloads:
        check_decode(data)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FUZZERS))
def test_fuzz_long(name):
    """VSAE_FUZZ_EXAMPLES examples (default 20,000): only Messages or ProtocolErrors, each decode under
    2 s and 4 MB of allocations; counts printed (-s) and recorded (VSAE_FUZZ_REPORT)."""
    tally = Tally(f"protocol.{name}", ProtocolError, max_traced_mb=4)

    @LONG
    @given(FUZZERS[name])
    def run(payloads):
        for data in payloads:
            tally.call(check_decode_raising, data)

    run()
    tally.finish(min_calls=FUZZ_EXAMPLES)


def check_decode_raising(data: bytes) -> Message:
    """check_decode, raising the ProtocolError (for the tally to count by code)."""
    result = check_decode(data)
    if isinstance(result, ProtocolError):
        raise result
    return result


def test_config_chunk_size_is_zero_or_between_the_minimum_and_a_whole_chunk():
    assert decode(pack("config", **CONFIG)).model_chunk_bytes == CHUNK_BYTES  # omitted: whole chunks
    assert decode(pack("config", **CONFIG, chunk_size=MIN_CHUNK_BYTES)).model_chunk_bytes == MIN_CHUNK_BYTES
    assert refused(pack("config", **CONFIG, chunk_size=MIN_CHUNK_BYTES - 1)) == "bad_value"
    assert refused(pack("config", **CONFIG, chunk_size=CHUNK_BYTES + 1)) == "bad_value"
    assert refused(pack("config", **CONFIG, chunk_size=-1)) == "bad_value"


def test_a_plain_shape_is_full_size():
    """A plain shape is the codec's own frames, shown as decoded: scale 1 only."""
    assert refused(pack("shape", first=0, scale=4, temporal=1, low_width=44, low_height=36, plain=True)) == "bad_value"


def test_a_probe_message_lies_within_its_cluster():
    assert refused(pack("probe", cluster=1, seq=5, count=5, data=b"")) == "bad_value"
    assert refused(pack("probe", cluster=1, seq=0, count=1, data=b"")) == "bad_value"  # one message times nothing
