import copy
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zstandard
from fuzzing import FUZZ_EXAMPLES, LONG, Tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec.bundle as bundle
from codec.bundle import FORMAT_VERSION, MAGIC, dumps, load, loads, save
from codec.errors import BundleError, VsaeError
from codec.model import MAX_MULTIPLIER, MAX_STAGES, MAX_WIDTH
from codec.ops import Codec

META = {"frame_size": [176, 144], "source": "carphone_pristine.mp4", "fps": 29.97, "seed": 0, "ok": True, "none": None}


@pytest.fixture(scope="module")
def codec(tiny_codec):
    return Codec(tiny_codec.model, tiny_codec.normalization, meta=dict(META))


@pytest.fixture(scope="module")
def blob(codec) -> bytes:
    return dumps(codec, "f32")


# -- helpers to craft bundles with a valid checksum ------------------------------------------------
def split(data: bytes) -> tuple[dict, dict]:
    outer = msgpack.unpackb(data[len(MAGIC):], raw=False)
    inner = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(outer["payload"]), raw=False)
    return outer, inner


def pack_payload(payload: bytes, version=FORMAT_VERSION) -> bytes:
    outer = {"version": version, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    return MAGIC + msgpack.packb(outer, use_bin_type=True)


def repack(inner: dict, version=FORMAT_VERSION) -> bytes:
    payload = zstandard.ZstdCompressor().compress(msgpack.packb(inner, use_bin_type=True))
    return pack_payload(payload, version)


def expect_bundle_error(data, match: str | None = None) -> BundleError:
    with pytest.raises(BundleError, match=match) as exc:
        loads(data)
    assert isinstance(exc.value, VsaeError)
    assert str(exc.value) and "\n" not in str(exc.value)
    return exc.value


# -- round trips ------------------------------------------------------------------------------------
def test_round_trip_f32_exact(codec, blob):
    back = loads(blob)
    a, b = codec.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert back.model.config == codec.model.config
    assert back.normalization.mean == pytest.approx(codec.normalization.mean, abs=0)
    assert back.normalization.std == pytest.approx(codec.normalization.std, abs=0)
    assert back.meta == META
    assert not back.model.training
    x = torch.rand(2, 3, 40, 56)
    assert torch.equal(back.project(x).frames, codec.project(x).frames)


def test_round_trip_f16_close(codec, carphone):
    data = dumps(codec)  # f16 is the default
    assert len(data) < len(dumps(codec, "f32")) * 0.7
    back = loads(data)
    assert back.meta == META
    _, inner = split(data)
    assert {t["dtype"] for t in inner["tensors"]} == {"f16", "i64"}
    x = carphone[:2]
    diff = (back.project(x).frames - codec.project(x).frames).abs()
    assert diff.max() < 0.02 and diff.mean() < 2e-3


def test_save_load_file(codec, tmp_path):
    path = tmp_path / "m.vsae"
    size = save(codec, path, "f32")
    assert path.stat().st_size == size
    assert not (tmp_path / "m.vsae.tmp").exists()
    assert load(path).meta == META


def test_bad_precision(codec):
    with pytest.raises(VsaeError):
        dumps(codec, "f64")


def test_loading_never_unpickles(blob, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("bundle loading must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    path = tmp_path / "m.vsae"
    path.write_bytes(blob)
    assert load(path).meta == META
    # A pickle renamed to .vsae is refused, not executed.
    evil = tmp_path / "evil.vsae"
    evil.write_bytes(pickle.dumps({"config": 1}))
    with pytest.raises(BundleError):
        load(evil)


def test_bundle_source_has_no_pickle():
    import inspect

    src = inspect.getsource(bundle)
    assert "pickle" not in src.replace("Never pickled", "")
    assert "torch.load" not in src and "np.load" not in src


# -- rejection -------------------------------------------------------------------------------------
def test_empty():
    expect_bundle_error(b"", "magic")


def test_not_bytes():
    expect_bundle_error("a string")


def test_wrong_magic(blob):
    expect_bundle_error(b"\x89VSAX\r\n\x1a" + blob[8:], "magic")
    expect_bundle_error(b"PK\x03\x04" + blob, "magic")


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.999])
def test_truncated(blob, fraction):
    cut = len(MAGIC) + int((len(blob) - len(MAGIC)) * fraction)
    expect_bundle_error(blob[:cut])


def test_truncated_by_one_byte(blob):
    expect_bundle_error(blob[:-1])


def test_trailing_garbage(blob):
    expect_bundle_error(blob + b"\x00")


@pytest.mark.parametrize("where", [0.05, 0.5, 0.95])
def test_flipped_bit_in_payload(blob, where):
    outer, _ = split(blob)
    payload = outer["payload"]
    start = blob.index(payload)
    pos = start + int(len(payload) * where)
    bad = bytearray(blob)
    bad[pos] ^= 0x10
    expect_bundle_error(bytes(bad), "checksum")


def test_wrong_checksum_string(blob):
    outer, _ = split(blob)
    outer["sha256"] = "0" * 64
    expect_bundle_error(MAGIC + msgpack.packb(outer, use_bin_type=True), "checksum")


@pytest.mark.parametrize("version", [0, 2, 99, "1", None, [1]])
def test_wrong_version(blob, version):
    _, inner = split(blob)
    expect_bundle_error(repack(inner, version=version), "version")


def test_header_malformed(blob):
    outer, _ = split(blob)
    for bad in ({**outer, "extra": 1}, {k: v for k, v in outer.items() if k != "sha256"}, [1, 2, 3], {**outer, "payload": "text"}):
        expect_bundle_error(MAGIC + msgpack.packb(bad, use_bin_type=True))


def test_tensor_shape_mismatch(blob):
    _, inner = split(blob)
    entry = next(t for t in inner["tensors"] if len(t["shape"]) == 4)
    entry["shape"] = [entry["shape"][1], entry["shape"][0], *entry["shape"][2:]]  # same byte count, transposed
    expect_bundle_error(repack(inner), "shape")


def test_tensor_data_length_mismatch(blob):
    _, inner = split(blob)
    inner["tensors"][0]["data"] = inner["tensors"][0]["data"][:-4]
    expect_bundle_error(repack(inner), "length")


def test_tensor_dtype_mismatch(blob):
    _, inner = split(blob)
    entry = next(t for t in inner["tensors"] if t["dtype"] == "f32")
    entry["dtype"] = "i64"
    expect_bundle_error(repack(inner), "dtype")
    entry["dtype"] = "f64"
    expect_bundle_error(repack(inner), "dtype")


@pytest.mark.parametrize("mutate", ["missing", "extra", "repeated", "renamed"])
def test_tensor_set_mismatch(blob, mutate):
    _, inner = split(blob)
    t = inner["tensors"]
    if mutate == "missing":
        t.pop()
    elif mutate == "extra":
        t.append(copy.deepcopy(t[0]))
    elif mutate == "repeated":
        t[1] = copy.deepcopy(t[0])
    else:
        t[0]["name"] = "encoder.99.weight"
    expect_bundle_error(repack(inner))


@pytest.mark.parametrize(
    "field,value",
    [("name", ["encoder.0.0.weight"]), ("name", 7), ("name", None), ("dtype", ["f32"]), ("dtype", {"a": 1}), ("shape", "8x3"), ("data", "text")],
)
def test_tensor_entry_wrong_types(blob, field, value):
    _, inner = split(blob)
    inner["tensors"][0][field] = value
    expect_bundle_error(repack(inner))


def test_tensor_entry_malformed(blob):
    _, inner = split(blob)
    inner["tensors"][0] = [1, 2, 3]
    expect_bundle_error(repack(inner))
    _, inner = split(blob)
    del inner["tensors"][0]["data"]
    expect_bundle_error(repack(inner))


@pytest.mark.parametrize(
    "config",
    [
        {"width": MAX_WIDTH + 1, "multipliers": [1, 2, 4], "encoder_kernel": 5, "decoder_kernel": 4},
        {"width": 8, "multipliers": [1, 2, 4000], "encoder_kernel": 5, "decoder_kernel": 4},
        {"width": 8, "multipliers": [1] * 64, "encoder_kernel": 5, "decoder_kernel": 4},
        {"width": 8, "multipliers": [1, 2, 4], "encoder_kernel": 9, "decoder_kernel": 4},
        {"width": 10**9, "multipliers": [1, 2, 4], "encoder_kernel": 5, "decoder_kernel": 4},
        {"width": -1, "multipliers": [1, 2, 4], "encoder_kernel": 5, "decoder_kernel": 4},
        {"width": 8.5, "multipliers": [1, 2, 4], "encoder_kernel": 5, "decoder_kernel": 4},
        "vsae-s16",
    ],
)
def test_config_out_of_bounds(blob, config):
    _, inner = split(blob)
    inner["config"] = config
    expect_bundle_error(repack(inner), "config")


def test_config_mismatching_tensors(blob):
    _, inner = split(blob)
    inner["config"] = {**inner["config"], "width": 16}
    expect_bundle_error(repack(inner))


@pytest.mark.parametrize(
    "norm",
    [
        {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]},
        {"mean": [0.5, 0.5, 0.5], "std": [0.2, -1.0, 0.2]},
        {"mean": [float("nan"), 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        {"mean": [0.5, 0.5, 0.5], "std": [float("inf"), 0.2, 0.2]},
        {"mean": ["a", 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        {"mean": [0.5, 0.5, 0.5]},
        [0.5, 0.2],
    ],
)
def test_normalization_invalid(blob, norm):
    _, inner = split(blob)
    inner["normalization"] = norm
    expect_bundle_error(repack(inner), "normalization")


@pytest.mark.parametrize("meta", [[1, 2], {"x": {"nested": 1}}, "text"])
def test_meta_invalid(blob, meta):
    _, inner = split(blob)
    inner["meta"] = meta
    expect_bundle_error(repack(inner), "meta")


def test_meta_too_many_items(blob):
    _, inner = split(blob)
    inner["meta"] = {f"k{i}": i for i in range(bundle.MAX_META_ITEMS + 1)}
    expect_bundle_error(repack(inner))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(blob, value):
    _, inner = split(blob)
    entry = next(t for t in inner["tensors"] if t["dtype"] == "f32" and len(t["shape"]) == 4)
    array = np.frombuffer(entry["data"], dtype=np.float32).copy()
    array[len(array) // 2] = value
    entry["data"] = array.tobytes()
    expect_bundle_error(repack(inner), "non-finite")


def test_non_finite_f16_weights(codec):
    _, inner = split(dumps(codec, "f16"))
    entry = next(t for t in inner["tensors"] if t["dtype"] == "f16")
    array = np.frombuffer(entry["data"], dtype=np.float16).copy()
    array[0] = np.inf
    entry["data"] = array.tobytes()
    expect_bundle_error(repack(inner), "non-finite")


def test_payload_malformed(blob):
    _, inner = split(blob)
    expect_bundle_error(repack({**inner, "extra": 1}), "payload")
    expect_bundle_error(repack([1, 2, 3]), "payload")
    expect_bundle_error(pack_payload(b"not zstd at all"), "decompress")
    expect_bundle_error(pack_payload(zstandard.ZstdCompressor().compress(b"\xc1")), "corrupt")
    expect_bundle_error(pack_payload(b""))


# Loads the bundle at sys.argv[1] under a 4 GiB address-space limit (so a huge allocation fails fast
# instead of exhausting the machine); exit 0 on BundleError, 3 on anything else.
_LIMITED_LOAD = """
import resource, sys
from codec.bundle import load
from codec.errors import BundleError
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
try:
    load(sys.argv[1])
except BundleError as exc:
    print("BundleError", exc)
    sys.exit(0)
except BaseException as exc:
    print(type(exc).__name__, str(exc)[:200])
    sys.exit(3)
print("loaded")
sys.exit(3)
"""


# Found following up a 102 MB peak-RSS jump in the long fuzz run: a ~230-byte bundle whose config asks for
# width 256 x multipliers 32 x 8 stages (~76 GiB) must be refused without allocating the model.
def test_config_asking_for_a_huge_model_is_a_bundle_error(blob, tmp_path):
    _, inner = split(blob)
    inner["config"].update(width=MAX_WIDTH, multipliers=[MAX_MULTIPLIER] * MAX_STAGES)
    inner["tensors"] = []
    path = tmp_path / "huge.vsae"
    path.write_bytes(repack(inner))
    assert path.stat().st_size < 1024
    result = subprocess.run([sys.executable, "-c", _LIMITED_LOAD, str(path)], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_zstd_bomb(monkeypatch):
    monkeypatch.setattr(bundle, "MAX_PAYLOAD_BYTES", 1 << 20)
    # 8 MiB of zeros compress to a few hundred bytes; the frame header states the full size.
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (8 << 20))
    assert len(bomb) < 4096
    expect_bundle_error(pack_payload(bomb), "expands beyond")
    # Same without a content size in the header (streamed): the bound holds all the same.
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    stream = cctx.compressobj()
    streamed = stream.compress(b"\x00" * (8 << 20)) + stream.flush()
    expect_bundle_error(pack_payload(streamed), "expands beyond")


def test_zstd_bomb_just_under_limit_is_not_size_error(monkeypatch):
    monkeypatch.setattr(bundle, "MAX_PAYLOAD_BYTES", 1 << 20)
    payload = zstandard.ZstdCompressor().compress(b"\x00" * (1 << 20))
    err = expect_bundle_error(pack_payload(payload))
    assert "expands beyond" not in str(err)


def test_oversized_bundle(monkeypatch, blob, tmp_path):
    monkeypatch.setattr(bundle, "MAX_BUNDLE_BYTES", len(blob) - 1)
    expect_bundle_error(blob, "limit")
    path = tmp_path / "big.vsae"
    path.write_bytes(blob)
    with pytest.raises(BundleError, match="limit"):
        load(path)


def test_foreign_msgpack_file(tmp_path):
    foreign = msgpack.packb({"weights": [1, 2, 3], "version": 1}, use_bin_type=True)
    expect_bundle_error(foreign, "magic")
    # Even behind the right magic, a foreign map is refused.
    expect_bundle_error(MAGIC + foreign, "malformed")
    expect_bundle_error(MAGIC + msgpack.packb([1, 2, 3]), "malformed")
    expect_bundle_error(MAGIC + msgpack.packb({1: 2}, use_bin_type=True))


def test_load_file_errors(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load(tmp_path / "missing.vsae")
    with pytest.raises(BundleError, match="directory"):
        load(tmp_path)
    empty = tmp_path / "empty.vsae"
    empty.write_bytes(b"")
    with pytest.raises(BundleError) as exc:
        load(empty)
    assert str(empty) in str(exc.value)


# -- fuzzing -----------------------------------------------------------------------------------------
# Each strategy draws a list of candidate bundles. The CI tests run 100 examples of each;
# test_fuzz_long (-m slow, see tests/fuzzing.py) runs VSAE_FUZZ_EXAMPLES of each with per-call time
# and memory bounds and counts.
def _only_bundle_errors(data: bytes) -> None:
    try:
        loads(data)
    except BundleError:
        pass


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_bytes():
    return st.builds(lambda data, magic: [(MAGIC if magic else b"") + data], st.binary(max_size=2048), st.booleans())


@st.composite
def mutated_bundle(draw, blob: bytes) -> list[bytes]:
    """Bit flips, byte sets, deletions, insertions and truncations of a real bundle."""
    raw = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif kind == "delete":
            del raw[pos : pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del raw[pos:]
    return [bytes(raw)]


@st.composite
def mutated_payload(draw, inner_bytes: bytes) -> list[bytes]:
    """Mutations past the checksum: the inner msgpack itself is corrupted, then re-hashed."""
    raw = bytearray(inner_bytes)
    # Bias positions towards the structure before the big weight blobs.
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.one_of(st.integers(0, min(400, len(raw) - 1)), st.integers(0, len(raw) - 1)))
        if draw(st.booleans()):
            raw[pos] = draw(st.integers(0, 255))
        else:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
    return [pack_payload(zstandard.ZstdCompressor(level=1).compress(bytes(raw)))]


# msgpack headers that declare a length (byte, length width): bin, str, array, map and ext of 8/16/32 bits.
LENGTH_HEADERS = [(0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4), (0xDC, 2), (0xDD, 4),
                  (0xDE, 2), (0xDF, 4), (0xC7, 1), (0xC8, 2), (0xC9, 4)]
HUGE = st.integers(0, 2**64 - 1) | st.integers(2**31 - 2, 2**32 + 1) | st.integers(2**63 - 2, 2**64 - 1) | st.integers(-(2**63), -1)


def _length_header(draw) -> bytes:
    byte, width = draw(st.sampled_from(LENGTH_HEADERS))
    top = 2 ** (8 * width) - 1
    length = draw(st.integers(0, top) | st.integers(max(0, top - 64), top))
    return bytes([byte]) + length.to_bytes(width, "big") + (b"\x01" if 0xC7 <= byte <= 0xC9 else b"")


def _zstd_frame_declaring(payload: bytes, size: int) -> bytes:
    """`payload`'s zstd frame with its header rewritten to declare `size` bytes of content (single segment)."""
    descriptor = payload[4]
    fcs = [1 if descriptor & 0x20 else 0, 2, 4, 8][descriptor >> 6]
    header = 1 + (0 if descriptor & 0x20 else 1) + [0, 1, 2, 4][descriptor & 3] + fcs
    return payload[:4] + b"\xe0" + size.to_bytes(8, "little") + payload[4 + header :]


@st.composite
def huge_declared_sizes(draw, blob: bytes, inner_bytes: bytes) -> list[bytes]:
    """Sizes declared far beyond the data: a msgpack length header spliced into the outer header or
    (re-hashed) the inner payload, a zstd frame declaring up to 2**64 - 1 bytes, tensors with huge or
    negative shapes, a config with huge numbers."""
    how = draw(st.sampled_from(["outer", "inner", "zstd", "shape", "config"]))
    if how == "outer":
        # Splice within the header part, before the payload bytes themselves.
        pos = draw(st.integers(len(MAGIC), len(MAGIC) + 120))
        return [blob[:pos] + _length_header(draw) + blob[pos : pos + draw(st.integers(0, 64))]]
    if how == "inner":
        pos = draw(st.integers(0, min(2000, len(inner_bytes))))
        raw = inner_bytes[:pos] + _length_header(draw) + inner_bytes[pos + draw(st.integers(0, 8)) :]
        return [pack_payload(zstandard.ZstdCompressor(level=1).compress(raw))]
    if how == "zstd":
        size = draw(HUGE.filter(lambda n: n >= 0))
        payload = zstandard.ZstdCompressor(level=1).compress(inner_bytes[: draw(st.integers(1, len(inner_bytes)))])
        return [pack_payload(_zstd_frame_declaring(payload, size))]
    _, inner = split(blob)
    if how == "shape":
        entry = draw(st.sampled_from(inner["tensors"]))
        entry["shape"] = draw(st.lists(HUGE, max_size=6))
    else:
        inner["config"][draw(st.sampled_from(sorted(inner["config"])))] = draw(HUGE | st.lists(HUGE, max_size=8))
    return [repack(inner)]


NESTERS = [b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01", b"\xde\x00\x01\xa1k"]


@st.composite
def deep_nesting(draw, blob: bytes) -> list[bytes]:
    """Arrays and maps nested up to 20,000 deep (msgpack's unpacker refuses more than 1,024 levels): as
    the whole header, or (re-hashed) as one of the payload's fields, the rest of the payload real."""
    depth = draw(st.integers(1, 64) | st.integers(1000, 1100) | st.integers(1, 20_000))
    openers = draw(st.lists(st.sampled_from(NESTERS), min_size=1, max_size=4))
    leaf = draw(st.sampled_from([b"\xc0", b"\x01", b"\xa0", b"\x80", b"\x90", b"", b"\xc1"]))
    nested = b"".join(openers[i % len(openers)] for i in range(depth)) + leaf
    _, inner = split(blob)
    key = draw(st.sampled_from(["config", "normalization", "meta", "tensors", "meta.item", "config.width"]))
    parts = []
    for name, value in inner.items():
        if key == name:
            parts.append(msgpack.packb(name) + nested)
        elif key.startswith(name + "."):  # a value nested inside this map
            sub = {k: v for k, v in value.items() if k != key.split(".")[1]}
            parts.append(msgpack.packb(name) + bytes([0x80 | (len(sub) + 1)])
                         + b"".join(msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True) for k, v in sub.items())
                         + msgpack.packb(key.split(".")[1]) + nested)
        else:
            parts.append(msgpack.packb(name) + msgpack.packb(value, use_bin_type=True))
    payload = bytes([0x80 | len(parts)]) + b"".join(parts)
    return [MAGIC + nested, pack_payload(zstandard.ZstdCompressor(level=1).compress(payload))]


@FUZZ
@given(random_bytes())
def test_fuzz_random_bytes(candidates):
    for data in candidates:
        _only_bundle_errors(data)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_bundle(blob, data):
    for candidate in data.draw(mutated_bundle(blob)):
        _only_bundle_errors(candidate)


@pytest.fixture(scope="module")
def inner_bytes(blob) -> bytes:
    outer, _ = split(blob)
    return zstandard.ZstdDecompressor().decompress(outer["payload"])


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_payload_with_valid_checksum(inner_bytes, data):
    for candidate in data.draw(mutated_payload(inner_bytes)):
        _only_bundle_errors(candidate)


@FUZZ
@given(data=st.data())
def test_fuzz_huge_declared_sizes(blob, inner_bytes, data):
    for candidate in data.draw(huge_declared_sizes(blob, inner_bytes)):
        _only_bundle_errors(candidate)


@FUZZ
@given(data=st.data())
def test_fuzz_deep_nesting(blob, data):
    for candidate in data.draw(deep_nesting(blob)):
        _only_bundle_errors(candidate)


def test_deep_nesting_strategy_reaches_the_payload(blob):
    # Guard the hand-built payload: with a shallow, valid value in place it is a loadable bundle.
    _, inner = split(blob)
    payload = bytes([0x84]) + b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in inner.items())
    assert isinstance(loads(pack_payload(zstandard.ZstdCompressor(level=1).compress(payload))), Codec)


LONG_FUZZERS = {
    "random_bytes": lambda blob, inner: random_bytes(),
    "mutated_bundle": lambda blob, inner: mutated_bundle(blob),
    "mutated_payload_valid_checksum": lambda blob, inner: mutated_payload(inner),
    "huge_declared_sizes": lambda blob, inner: huge_declared_sizes(blob, inner),
    "deep_nesting": lambda blob, inner: deep_nesting(blob),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LONG_FUZZERS))
def test_fuzz_long(blob, inner_bytes, name):
    """VSAE_FUZZ_EXAMPLES examples (default 20,000): loads returns a Codec or raises BundleError, nothing
    else, each call under 2 s. Its allocations are bounded by the loader's own cap: `_decompress` reads
    with one `read(MAX_PAYLOAD_BYTES + 1)`, for which python-zstandard allocates that whole buffer up
    front (virtual memory; tracemalloc counts it, RSS does not), so the traced bound is that plus 64 MB."""
    tally = Tally(f"bundle.{name}", BundleError, max_traced_mb=(bundle.MAX_PAYLOAD_BYTES >> 20) + 64)

    @LONG
    @given(LONG_FUZZERS[name](blob, inner_bytes))
    def run(candidates):
        for data in candidates:
            tally.call(loads, data)

    run()
    tally.finish(min_calls=FUZZ_EXAMPLES)
