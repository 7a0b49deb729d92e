"""Live model refresh: keep fine-tuning a copy of the model on the call's latest frames and ship compact,
verified weight updates that sender (closed loop) and receiver apply from the same source frame.

Update forms (UPDATE_FORMS), each int8 per tensor (symmetric, one scale; codec/quant.py, the bundle's
quantizer) and zstd on top:
  * `sparse-grad`: the top weights by accumulated gradient magnitude since the last update (SRVC's rule):
    one index + one value per updated weight;
  * `sparse-delta`: the same format, the weights chosen by how far they moved from the receiver's copy;
  * `affine`: a restricted set sent whole: every BatchNorm scale/shift and the final RGB projection;
  * `full`: every weight's delta (the upper bound of what int8 deltas can do; rarely fits a call's budget).
The delta is always taken against the receiver's weights as the sender mirrors them, so what
quantization or a sparse choice left out is sent later (error feedback).

Wire format, never pickled, compact (a call's whole model budget can be a few kB): UPDATE_MAGIC + the
SHA-256 of the payload (32 bytes) + the payload, zstd of the msgpack array [WIRE_VERSION, version,
apply_from, form, base, result, tensors], each tensor [parameter number in state-dict order, shape, scale,
index gaps (uint32) or nil for all, int8 values]. `base` / `result` are the SHA-256 digests (32 bytes) of
the weights before and after: the receiver applies
an update to a copy, checks everything (names, shapes, index ranges, finiteness, sizes, both digests) and
swaps only when all holds, so a bad update never reaches the picture.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
from dataclasses import dataclass, field

import msgpack
import numpy as np
import torch
import torch.nn.functional as F
import zstandard

from . import quant
from .errors import VsaeError
from .model import AutoEncoder, Normalization

UPDATE_MAGIC = b"\x89VSUP\r\n"
UPDATE_FORMS = ("sparse-grad", "sparse-delta", "affine", "full")
# Bounds checked before anything is decompressed or allocated.
MAX_UPDATE_BYTES = 8 * 1024 * 1024
MAX_UPDATE_PAYLOAD = 32 * 1024 * 1024
MAX_UPDATE_TENSORS = 256
ZSTD_LEVEL = 19  # updates are small and sent rarely: spend the CPU on bytes
# A sparse update's bytes per weight before zstd (index delta ~1-2 bytes after coding + 1 value): the
# first guess of how many weights fit a budget, corrected by measuring: up to SPARSE_FIT_ROUNDS packings,
# stopping once one fills SPARSE_FILL of the budget.
SPARSE_BYTES_GUESS = 2.5
SPARSE_FIT_ROUNDS = 6
SPARSE_FILL = 0.9
# Refresh training: Adam at this rate on the call's frames (lower than the fit's 1e-3: it starts trained).
REFRESH_LR = 3e-4
REFRESH_BATCH = 4
# An update is sent only if, on the latest keys, the receiver's weights after it rebuild them at least this
# much better than before (the sender knows both: its mirror and the update's result). A sparse subset of a
# fine-tuned model's moves can make the model worse (measured on carphone's call: the top-741 weights by
# gradient at lr 1e-3 took the unguarded rebuild from 23.65 to 22.42 dB).
MIN_UPDATE_GAIN_DB = 0.02
# ... measured on this many of the latest keys (a forward pass each, twice).
GAIN_CHECK_KEYS = 8


class UpdateError(VsaeError):
    """A model update that is malformed, foreign or would break the model: refused, old model kept."""


WIRE_VERSION = 1


def weights_digest(model: torch.nn.Module) -> bytes:
    """SHA-256 of every parameter and buffer (float32 bytes, state-dict order)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def affine_names(model: AutoEncoder) -> list[str]:
    """The `affine` form's restricted set: BatchNorm scales and shifts, and the final RGB projection."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            names += [f"{module_name}.weight", f"{module_name}.bias"]
    return names + ["to_rgb.weight", "to_rgb.bias"]


@dataclass
class UpdateInfo:
    version: int
    apply_from: int
    form: str
    weights: int  # weights the update changes
    bytes: int


def _quantize(delta: np.ndarray) -> tuple[float, np.ndarray]:
    """A delta as int8, one symmetric scale for the tensor: the bundle's quantizer (codec/quant.py)."""
    q = quant.quantize(delta, 8, axis=None, symmetric=True)
    return float(q.scale[0]), q.values


def _pack(version: int, apply_from: int, form: str, base: bytes, result: bytes, tensors: list[dict], names: list[str]) -> bytes:
    number = {n: i for i, n in enumerate(names)}
    wire = [[number[e["name"]], e["shape"], e["scale"], e["indices"], e["values"]] for e in tensors]
    inner = [WIRE_VERSION, version, apply_from, UPDATE_FORMS.index(form), base, result, wire]
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(msgpack.packb(inner, use_bin_type=True))
    return UPDATE_MAGIC + hashlib.sha256(payload).digest() + payload


def _apply_entries(model: AutoEncoder, tensors: list[dict]) -> None:
    """Add dequantized deltas to `model` in place (the one arithmetic both ends run)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for entry in tensors:
            p = params[entry["name"]]
            q = quant.Quantized(8, None, np.array([entry["scale"]], np.float32), np.zeros(1, np.int8),
                                np.frombuffer(entry["values"], np.int8))
            values = torch.from_numpy(quant.dequantize(q))
            flat = p.data.detach().cpu().contiguous().view(-1).clone()  # weights may be channels-last
            if entry.get("indices") is None:
                flat += values
            else:
                flat[torch.from_numpy(np.cumsum(np.frombuffer(entry["indices"], np.uint32).astype(np.int64)))] += values
            p.data.copy_(flat.view(p.shape).to(p.device))


def make_update(receiver: AutoEncoder, trained: AutoEncoder, form: str, budget_bytes: int, version: int, apply_from: int,
                grad_magnitude: dict[str, torch.Tensor] | None = None) -> tuple[bytes, AutoEncoder, UpdateInfo] | None:
    """The update taking `receiver` (the weights the receiver has) towards `trained`, in at most `budget_bytes`
    (None when nothing fits). Returns the wire bytes, the receiver's model after applying them (exactly what
    the receiver will compute) and a summary."""
    if form not in UPDATE_FORMS:
        raise VsaeError(f"unknown update form {form!r}: use {', '.join(UPDATE_FORMS)}")
    before = dict(receiver.named_parameters())
    after = dict(trained.named_parameters())
    deltas = {n: (after[n].detach() - before[n].detach()).cpu().float().contiguous().numpy().ravel() for n in before}
    base = weights_digest(receiver)
    if form in ("affine", "full"):
        names = affine_names(receiver) if form == "affine" else list(before)
        entries = []
        for n in names:
            scale, q = _quantize(deltas[n])
            entries.append({"name": n, "shape": list(before[n].shape), "scale": scale, "indices": None, "values": q.tobytes()})
        return _finish(receiver, entries, form, budget_bytes, version, apply_from, base)
    # Sparse: score every weight, keep the top ones that fit the budget (measured, shrinking the guess).
    if form == "sparse-grad":
        if grad_magnitude is None:
            raise VsaeError("sparse-grad needs the accumulated gradient magnitudes")
        scores = np.concatenate([grad_magnitude[n].cpu().float().contiguous().numpy().ravel() for n in before])
    else:
        scores = np.concatenate([np.abs(deltas[n]) for n in before])
    flat_delta = np.concatenate([deltas[n] for n in before])
    offsets = np.cumsum([0] + [deltas[n].size for n in before])
    count = min(int(budget_bytes / SPARSE_BYTES_GUESS), int(np.count_nonzero(flat_delta)))
    ranked = np.argsort(-scores, kind="stable")
    best = None
    limit = int(np.count_nonzero(flat_delta))
    for _ in range(SPARSE_FIT_ROUNDS):
        if count <= 0:
            break
        chosen = np.sort(ranked[:count])
        entries = []
        for k, n in enumerate(before):
            local = chosen[(chosen >= offsets[k]) & (chosen < offsets[k + 1])] - offsets[k]
            if local.size == 0:
                continue
            scale, q = _quantize(deltas[n][local])
            coded = np.diff(local, prepend=0).astype(np.uint32)  # first index, then gaps: small numbers zstd packs well
            entries.append({"name": n, "shape": list(before[n].shape), "scale": scale, "indices": coded.tobytes(), "values": q.tobytes()})
        # A digest-like placeholder for the result (zeros would compress, and the real update come out larger).
        size = len(_pack(version, apply_from, form, base, hashlib.sha256(base).digest(), entries, list(before)))
        if size <= budget_bytes:
            best = entries
            if size > SPARSE_FILL * budget_bytes or count >= limit:
                break
        # Measured bytes per weight at this count: aim just under the budget next.
        grown = int(count * budget_bytes / size * 0.97)
        count = min(limit, grown if grown != count else count - 1)
    return _finish(receiver, best, form, budget_bytes, version, apply_from, base) if best is not None else None


def _finish(receiver: AutoEncoder, entries: list[dict], form: str, budget_bytes: int, version: int, apply_from: int,
            base: str) -> tuple[bytes, AutoEncoder, UpdateInfo] | None:
    updated = copy.deepcopy(receiver)
    _apply_entries(updated, entries)
    data = _pack(version, apply_from, form, base, weights_digest(updated), entries, [n for n, _ in receiver.named_parameters()])
    if len(data) > budget_bytes:
        return None
    weights = sum(len(e["values"]) for e in entries)
    return data, updated, UpdateInfo(version, apply_from, form, weights, len(data))


def restamp(data: bytes, apply_from: int) -> bytes:
    """The same update (one this side made) applying from another source frame: making an update takes a
    while, so the sender fixes the key it applies from only when it sends it."""
    payload = zstandard.ZstdDecompressor().decompress(data[len(UPDATE_MAGIC) + 32 :], max_output_size=MAX_UPDATE_PAYLOAD)
    inner = msgpack.unpackb(payload, raw=False)
    inner[2] = apply_from
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(msgpack.packb(inner, use_bin_type=True))
    return UPDATE_MAGIC + hashlib.sha256(payload).digest() + payload


def _unpack(data: bytes, max_bin: int) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bin, max_str_len=256,
                               max_array_len=MAX_UPDATE_TENSORS, max_map_len=16, max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise UpdateError(f"model update is corrupt ({type(exc).__name__})") from None


def read_update(data: bytes, model: AutoEncoder, version: int) -> tuple[AutoEncoder, UpdateInfo]:
    """Verify a model update against the receiver's `model` (currently at `version`) and return the updated
    copy; `model` itself is never touched. Raises UpdateError on anything wrong."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_UPDATE_BYTES:
        raise UpdateError("model update is not bytes or is over the size limit")
    data = bytes(data)
    if not data.startswith(UPDATE_MAGIC) or len(data) < len(UPDATE_MAGIC) + 32:
        raise UpdateError("not a vsae model update")
    digest, payload = data[len(UPDATE_MAGIC) : len(UPDATE_MAGIC) + 32], data[len(UPDATE_MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise UpdateError("model update checksum mismatch")
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload))
        raw = reader.read(MAX_UPDATE_PAYLOAD + 1)
    except zstandard.ZstdError:
        raise UpdateError("model update does not decompress") from None
    if len(raw) > MAX_UPDATE_PAYLOAD:
        raise UpdateError("model update expands beyond its limit")
    inner = _unpack(raw, MAX_UPDATE_PAYLOAD)
    if not isinstance(inner, list) or len(inner) != 7 or inner[0] != WIRE_VERSION:
        raise UpdateError("model update payload is malformed or of another format version")
    _, new_version, apply_from, form_number, base, result, wire = inner
    if not isinstance(form_number, int) or not 0 <= form_number < len(UPDATE_FORMS) or not isinstance(new_version, int) \
            or not isinstance(apply_from, int) or apply_from < 0:
        raise UpdateError("model update header is malformed")
    form = UPDATE_FORMS[form_number]
    if new_version != version + 1:
        raise UpdateError(f"model update is version {new_version}, expected {version + 1}")
    if base != weights_digest(model):
        raise UpdateError("model update is for other weights than this receiver has")
    names = [n for n, _ in model.named_parameters()]
    if not isinstance(wire, list) or not all(isinstance(w, list) and len(w) == 5 and isinstance(w[0], int) for w in wire) \
            or not all(0 <= w[0] < len(names) for w in wire):
        raise UpdateError("model update tensors are malformed")
    tensors = [{"name": names[w[0]], "shape": w[1], "scale": w[2], "indices": w[3], "values": w[4]} for w in wire]
    params = dict(model.named_parameters())
    seen = set()
    for entry in tensors:
        if entry["name"] in seen:
            raise UpdateError("model update names a tensor twice")
        seen.add(entry["name"])
        p = params[entry["name"]]
        if entry.get("shape") != list(p.shape):
            raise UpdateError(f"model update tensor {entry['name']}: wrong shape")
        scale, values, indices = entry.get("scale"), entry.get("values"), entry.get("indices")
        if not isinstance(scale, float) or not math.isfinite(scale) or not 0 < scale < 1e3 or not isinstance(values, bytes):
            raise UpdateError(f"model update tensor {entry['name']}: bad scale or values")
        if indices is None:
            if len(values) != p.numel():
                raise UpdateError(f"model update tensor {entry['name']}: {len(values)} values for {p.numel()} weights")
        else:
            if not isinstance(indices, bytes) or len(indices) % 4 or len(indices) // 4 != len(values) or not values:
                raise UpdateError(f"model update tensor {entry['name']}: indices and values disagree")
            gaps = np.frombuffer(indices, np.uint32).astype(np.int64)
            positions = np.cumsum(gaps)
            if (gaps[1:] == 0).any() or positions[-1] >= p.numel():
                raise UpdateError(f"model update tensor {entry['name']}: index out of range or repeated")
    updated = copy.deepcopy(model)
    _apply_entries(updated, tensors)
    if not all(torch.isfinite(t).all() for t in updated.state_dict().values() if t.is_floating_point()):
        raise UpdateError("model update makes a weight non-finite")
    if weights_digest(updated) != result:
        raise UpdateError("model update result digest mismatch")
    weights = sum(len(e["values"]) for e in tensors)
    return updated, UpdateInfo(new_version, apply_from, form, weights, len(data))


def update_gain_db(before: AutoEncoder, after: AutoEncoder, normalization: Normalization, inputs: torch.Tensor,
                   targets: torch.Tensor) -> float:
    """PSNR gain (dB) of `after` over `before` rebuilding `targets` from `inputs` (N, 3, H, W) in [0, 1]: the
    sender's check, on the latest keys, that an update helps before it spends the model budget on it."""
    errors = []
    with torch.inference_mode():
        for model in (before, after):
            out = normalization.invert(model(normalization.apply(inputs))).clamp(0, 1)
            errors.append(float(F.mse_loss(out, targets)))
    return 10 * math.log10(max(errors[0], 1e-12) / max(errors[1], 1e-12))


@dataclass
class Refresher:
    """The sender's fine-tuning copy of the model: trains on (receiver input, original) pairs of the call."""

    model: AutoEncoder
    normalization: Normalization
    form: str = "sparse-grad"
    lr: float = REFRESH_LR
    batch: int = REFRESH_BATCH
    seed: int = 0
    steps: int = 0
    grad_magnitude: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(self.model)
        # BatchNorm keeps the statistics the receiver has (eval mode): a refresh moves weights only.
        self.model.eval()
        names = set(affine_names(self.model)) if self.form == "affine" else None
        self.params = [p for n, p in self.model.named_parameters() if names is None or n in names]
        for n, p in self.model.named_parameters():
            p.requires_grad_(names is None or n in names)
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.reset_grad_magnitude()

    def reset_grad_magnitude(self) -> None:
        self.grad_magnitude = {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}

    def train(self, inputs: torch.Tensor, targets: torch.Tensor, steps: int) -> float | None:
        """`steps` Adam steps on random batches of (inputs, targets) (N, 3, H, W) in [0, 1]; returns the last loss."""
        loss_value = None
        n = inputs.shape[0]
        for _ in range(steps):
            pick = torch.randint(n, (min(self.batch, n),), generator=self.generator)
            x = self.normalization.apply(inputs[pick])
            y = self.normalization.apply(targets[pick])
            out = self.model(x)
            loss = F.mse_loss(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, p in self.model.named_parameters():
                if p.grad is not None:
                    self.grad_magnitude[name] += p.grad.abs()
            self.optimizer.step()
            self.steps += 1
            loss_value = float(loss.detach())
        return loss_value
