"""The model bundle: the single file the sender ships to the receiver. Never pickled.

Layout: MAGIC (8 bytes) + msgpack map {"version", "sha256", "payload"}, where payload is a zstd frame
of a msgpack map {"config", "normalization", "meta", "tensors": [{"name", "dtype", "shape", "data"}]}
and sha256 is the hex digest of the compressed payload (checked before anything is decompressed).
Storage (`precision`): f32 or f16 tensors, or int8/int6/int5/int4/mixed: convolution weights quantized per
output channel (quant.storage_plan says each one's bits) (codec/quant.py; its entries add "axis", "scale" (float32 per channel) and "zero" (int8 per
channel)), the small tensors (BatchNorm, biases) in f16.
Loading bounds every size, validates the config, and checks each tensor against the model the
config builds, so a corrupt, truncated, foreign or oversized file fails with one clear BundleError.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import msgpack
import numpy as np
import torch
import zstandard

from .errors import BundleError, VsaeError
from .model import AutoEncoder, ModelConfig, Normalization
from .ops import Codec
from . import quant

MAGIC = b"\x89VSAE\r\n\x1a"
FORMAT_VERSION = 1
# Bounds: a bundle above these is refused before decompressing / allocating.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024
DECOMPRESS_CHUNK = 1 << 20
MAX_TENSORS = 1024
MAX_META_ITEMS = 64
ZSTD_LEVEL = 10
DTYPES = {"f16": np.float16, "f32": np.float32, "i64": np.int64}
# Integer storages (codec/quant.py decides each weight's bits), and the tensor entries' dtype code per width.
QUANT_PRECISIONS = quant.INTEGER_STORAGES
QUANT_DTYPES = {f"q{bits}": bits for bits in quant.BITS}
PRECISIONS = ("f32", "f16", *QUANT_PRECISIONS)
# What `vsae fit` stores by default: mixed (codec/quant.py), with the quantization-aware end of the fit, is
# under 1 MB and within 0.02 dB of f16 on carphone and bikes (README, "The model bundle"; int8: 1.6 MB).
DEFAULT_PRECISION = "mixed"
ENTRY_KEYS = {"name", "dtype", "shape", "data"}
QUANT_ENTRY_KEYS = ENTRY_KEYS | {"axis", "scale", "zero"}


def _tensor_entry(name: str, tensor: torch.Tensor, precision: str, plan: tuple[int, int] | None) -> dict:
    t = tensor.detach().cpu()
    if t.is_floating_point() and plan is not None:
        bits, axis = plan
        q = quant.quantize(t.float().numpy(), bits, axis)
        return {"name": name, "dtype": f"q{bits}", "shape": list(t.shape), "data": quant.pack(q.values, bits),
                "axis": axis, "scale": q.scale.astype("<f4").tobytes(), "zero": q.zero.tobytes()}
    if t.is_floating_point():
        code = "f16" if precision in QUANT_PRECISIONS else precision
    else:
        code = "i64"
    array = t.numpy().astype(DTYPES[code], copy=False)
    return {"name": name, "dtype": code, "shape": list(array.shape), "data": np.ascontiguousarray(array).tobytes()}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise VsaeError(f"bundle precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def dumps(codec: Codec, precision: str = "f16") -> bytes:
    """Serialize a fitted codec to bundle bytes: f16 weights by default; f32, or int8/int6/int5/int4 convolution
    weights (per output channel)."""
    check_precision(precision)
    state = codec.model.state_dict()
    plan = quant.storage_plan(codec.model, precision) if precision in QUANT_PRECISIONS else {}
    inner = {
        "config": codec.model.config.to_dict(),
        "normalization": {"mean": list(codec.normalization.mean), "std": list(codec.normalization.std)},
        "meta": codec.meta,
        "tensors": [_tensor_entry(k, v, precision, plan.get(k)) for k, v in state.items()],
    }
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(msgpack.packb(inner, use_bin_type=True))
    outer = {"version": FORMAT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    return MAGIC + msgpack.packb(outer, use_bin_type=True)


def save(codec: Codec, path: str | Path, precision: str = "f16") -> int:
    """Write a bundle atomically; returns its size in bytes."""
    data = dumps(codec, precision)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(data)


def _unpack(data: bytes, what: str, max_bin: int) -> object:
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=max_bin, max_str_len=4096,
            max_array_len=MAX_TENSORS, max_map_len=MAX_META_ITEMS, max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise BundleError(f"model bundle {what} is corrupt ({type(exc).__name__}: {exc})") from None


def _decompress(payload: bytes) -> bytes:
    """zstd decompression that never produces more than MAX_PAYLOAD_BYTES, whatever the header claims."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload))
        # Read in chunks: one read(MAX + 1) would reserve the whole cap up front on every load.
        parts, size = [], 0
        while size <= MAX_PAYLOAD_BYTES:
            chunk = reader.read(DECOMPRESS_CHUNK)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        out = b"".join(parts)
    except zstandard.ZstdError as exc:
        raise BundleError(f"model bundle payload does not decompress ({exc})") from None
    if len(out) > MAX_PAYLOAD_BYTES:
        raise BundleError(f"model bundle payload expands beyond {MAX_PAYLOAD_BYTES} bytes")
    return out


def _check_meta(meta: object) -> dict:
    if not isinstance(meta, dict):
        raise BundleError("model bundle meta must be a map")
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float, bool, type(None), list)):
            raise BundleError(f"model bundle meta field {k!r} has an unsupported type")
    return meta


def loads(data: bytes, device: str | torch.device = "cpu") -> Codec:
    """Parse and fully validate bundle bytes into a ready Codec. Raises BundleError on anything wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BundleError("model bundle must be bytes")
    data = bytes(data)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"model bundle is {len(data)} bytes, above the {MAX_BUNDLE_BYTES} limit")
    if not data.startswith(MAGIC):
        raise BundleError("not a vsae model bundle (bad magic bytes)")
    outer = _unpack(data[len(MAGIC):], "header", MAX_BUNDLE_BYTES)
    if not isinstance(outer, dict) or set(outer) != {"version", "sha256", "payload"}:
        raise BundleError("model bundle header is malformed")
    if outer["version"] != FORMAT_VERSION:
        raise BundleError(f"model bundle format version {outer['version']!r} is not supported (expected {FORMAT_VERSION})")
    payload = outer["payload"]
    if not isinstance(payload, bytes) or not isinstance(outer["sha256"], str):
        raise BundleError("model bundle header is malformed")
    if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
        raise BundleError("model bundle checksum mismatch (file corrupted or truncated)")
    inner = _unpack(_decompress(payload), "payload", MAX_PAYLOAD_BYTES)
    if not isinstance(inner, dict) or set(inner) != {"config", "normalization", "meta", "tensors"}:
        raise BundleError("model bundle payload is malformed")
    try:
        config = ModelConfig.from_dict(inner["config"])
    except VsaeError as exc:
        raise BundleError(f"model bundle config invalid: {exc}") from None
    norm = inner["normalization"]
    if (
        not isinstance(norm, dict)
        or set(norm) != {"mean", "std"}
        or not all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v) for v in norm.values())
        or not all(s > 0 for s in norm["std"])
    ):
        raise BundleError("model bundle normalization is invalid")
    meta = _check_meta(inner["meta"])
    # Shapes from a skeleton on the meta device: nothing is allocated until every tensor has checked out,
    # so a tiny bundle whose config asks for a huge model is refused instead of allocating it.
    with torch.device("meta"):
        expected = AutoEncoder(config).state_dict()
    tensors = inner["tensors"]
    if not isinstance(tensors, list) or len(tensors) != len(expected):
        raise BundleError(f"model bundle holds {len(tensors) if isinstance(tensors, list) else '?'} tensors, the config needs {len(expected)}")
    state = {}
    for entry in tensors:
        if not isinstance(entry, dict) or set(entry) not in (ENTRY_KEYS, QUANT_ENTRY_KEYS):
            raise BundleError("model bundle tensor entry is malformed")
        name, code, shape, raw = entry["name"], entry["dtype"], entry["shape"], entry["data"]
        if not isinstance(name, str) or not isinstance(code, str):
            raise BundleError("model bundle tensor entry is malformed")
        if name not in expected or name in state:
            raise BundleError(f"model bundle has an unexpected or repeated tensor {name!r}")
        want = tuple(expected[name].shape)
        if not isinstance(shape, list) or tuple(shape) != want:
            raise BundleError(f"tensor {name!r} has shape {shape}, the config needs {list(want)}")
        if (set(entry) == QUANT_ENTRY_KEYS) != (code in QUANT_DTYPES):
            raise BundleError(f"tensor {name!r} entry does not match its dtype {code!r}")
        if code in QUANT_DTYPES:
            if not expected[name].is_floating_point():
                raise BundleError(f"tensor {name!r} has an unsupported dtype {code!r}")
            array = _dequantized(name, entry, QUANT_DTYPES[code], want)
        else:
            if code not in DTYPES or (code == "i64") == expected[name].is_floating_point():
                raise BundleError(f"tensor {name!r} has an unsupported dtype {code!r}")
            if not isinstance(raw, bytes) or len(raw) != math.prod(want) * np.dtype(DTYPES[code]).itemsize:
                raise BundleError(f"tensor {name!r} data length does not match its shape")
            array = np.frombuffer(raw, dtype=DTYPES[code]).reshape(want)
        if code != "i64" and not np.isfinite(array).all():
            raise BundleError(f"tensor {name!r} holds non-finite values")
        state[name] = torch.from_numpy(array.copy()).to(expected[name].dtype)
    model = AutoEncoder(config)
    model.load_state_dict(state)
    # What the tensors are stored as, read from them (not trusted from meta): the widest code present.
    codes = {entry["dtype"] for entry in tensors}
    widths = {QUANT_DTYPES[c] for c in codes if c in QUANT_DTYPES}
    if len(widths) > 1:
        storage = "mixed"
    elif widths:
        storage = next(p for p, bits in quant.UNIFORM_STORAGES.items() if bits in widths)
    else:
        storage = "f32" if "f32" in codes else "f16"
    return Codec(model, Normalization(list(map(float, norm["mean"])), list(map(float, norm["std"]))), torch.device(device), meta,
                 storage=storage)


def _dequantized(name: str, entry: dict, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """A quantized entry's float32 values, after checking its axis, scales, zero-points and packed data."""
    axis, scale, zero = entry["axis"], entry["scale"], entry["zero"]
    if type(axis) is not int or not 0 <= axis < len(shape) or not isinstance(scale, bytes) or not isinstance(zero, bytes) \
            or len(scale) != 4 * shape[axis] or len(zero) != shape[axis]:
        raise BundleError(f"tensor {name!r}: quantization axis, scales or zero-points malformed")
    try:
        q = quant.Quantized(bits, axis, np.frombuffer(scale, "<f4").astype(np.float32), np.frombuffer(zero, np.int8),
                            quant.unpack(entry["data"], bits, shape))
        quant.check_parameters(q.scale, q.zero, bits, shape[axis])
    except quant.QuantError as exc:
        raise BundleError(f"tensor {name!r}: {exc}") from None
    return quant.dequantize(q)


def load(path: str | Path, device: str | torch.device = "cpu") -> Codec:
    """Read and validate a bundle file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path}: {size} bytes, above the {MAX_BUNDLE_BYTES}-byte bundle limit")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise BundleError(f"model path is a directory: {path}") from None
    except OSError as exc:
        raise BundleError(f"cannot read model file {path}: {exc.strerror}") from None
    try:
        return loads(data, device)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None

