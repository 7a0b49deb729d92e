import copy
import hashlib
import pickle

import msgpack
import numpy as np
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codec.bundle as bundle
from codec.bundle import FORMAT_VERSION, MAGIC, dumps, load, loads, save
from codec.errors import BundleError, VsaeError
from codec.model import MAX_WIDTH
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
def _only_bundle_errors(data: bytes) -> None:
    try:
        loads(data)
    except BundleError:
        pass


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=2048), magic=st.booleans())
def test_fuzz_random_bytes(data, magic):
    _only_bundle_errors((MAGIC if magic else b"") + data)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_bundle(blob, data):
    raw = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif kind == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 16))]
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del raw[pos:]
    _only_bundle_errors(bytes(raw))


@pytest.fixture(scope="module")
def inner_bytes(blob) -> bytes:
    outer, _ = split(blob)
    return zstandard.ZstdDecompressor().decompress(outer["payload"])


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_payload_with_valid_checksum(inner_bytes, data):
    """Mutations past the checksum: the inner msgpack itself is corrupted, then re-hashed."""
    raw = bytearray(inner_bytes)
    # Bias positions towards the structure before the big weight blobs.
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.one_of(st.integers(0, min(400, len(raw) - 1)), st.integers(0, len(raw) - 1)))
        if data.draw(st.booleans()):
            raw[pos] = data.draw(st.integers(0, 255))
        else:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    _only_bundle_errors(pack_payload(zstandard.ZstdCompressor(level=1).compress(bytes(raw))))
