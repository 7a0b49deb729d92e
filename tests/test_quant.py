"""Integer weight storage (codec/quant.py) and the quantized bundles built on it (codec/bundle.py)."""

import numpy as np
import pytest
import torch
from test_bundle import META, expect_bundle_error, repack, split

from codec import bundle, quant
from codec.cli import main as vsae_main
from codec.ops import Codec
from codec.refresh import make_update, read_update
from codec.train import QAT_FRACTION, FitOptions, fit
from codec.model import ModelConfig


@pytest.fixture(scope="module")
def codec(tiny_codec):
    return Codec(tiny_codec.model, tiny_codec.normalization, meta=dict(META))


# -- the quantizer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", quant.BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_error_is_at_most_half_a_step_per_channel(bits, symmetric):
    rng = np.random.default_rng(bits)
    w = rng.normal(0, 0.1, (6, 5, 3, 3)).astype(np.float32)
    w[2] += 0.3  # a lopsided channel
    w[4] = 0.0  # an all-zero channel keeps exact zeros
    for axis in (0, 1, None):
        q = quant.quantize(w, bits, axis, symmetric)
        back = quant.dequantize(q)
        assert back.shape == w.shape and back.dtype == np.float32
        channels = 1 if axis is None else w.shape[axis]
        assert q.scale.shape == (channels,) and q.zero.shape == (channels,)
        shape = [1] * w.ndim
        if axis is not None:
            shape[axis] = -1
        assert (np.abs(back - w) <= q.scale.reshape(shape) / 2 * (1 + 1e-5) + 1e-7).all()
        assert q.values.min() >= quant.QMIN[bits] and q.values.max() <= quant.QMAX[bits]
        if symmetric:
            assert (q.zero == 0).all()
    assert (quant.dequantize(quant.quantize(w, bits, 0))[4] == 0).all()


@pytest.mark.parametrize("bits", quant.BITS)
@pytest.mark.parametrize("count", [1, 7, 64])
def test_pack_unpack_round_trip(bits, count):
    rng = np.random.default_rng(count)
    values = rng.integers(quant.QMIN[bits], quant.QMAX[bits] + 1, count).astype(np.int8)
    data = quant.pack(values, bits)
    assert len(data) == quant.packed_size(count, bits)
    assert len(data) == (count + 1) // 2 if bits == 4 else len(data) == count
    assert np.array_equal(quant.unpack(data, bits, (count,)), values)


def test_unpack_refuses_bad_packings():
    with pytest.raises(quant.QuantError, match="bytes"):
        quant.unpack(b"\x00" * 5, 8, (6,))
    with pytest.raises(quant.QuantError, match="6-bit range"):
        quant.unpack(bytes([40]), 6, (1,))
    with pytest.raises(quant.QuantError, match="pad nibble"):
        quant.unpack(bytes([0xF0]), 4, (1,))


@pytest.mark.parametrize("scale,zero,match", [
    ([np.nan, 1.0], [0, 0], "scale"), ([0.0, 1.0], [0, 0], "scale"), ([-1.0, 1.0], [0, 0], "scale"),
    ([1e9, 1.0], [0, 0], "scale"), ([1.0], [0], "channels"), ([1.0, 1.0], [40, 0], "zero-point"),
])
def test_check_parameters_refuses(scale, zero, match):
    with pytest.raises(quant.QuantError, match=match):
        quant.check_parameters(np.array(scale, np.float32), np.array(zero, np.int8), 6, 2)


def test_fake_quantize_matches_storage_and_passes_gradients():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 5, 5, requires_grad=True)
    fq = quant.fake_quantize(w, 4, 0)
    stored = quant.dequantize(quant.quantize(w.detach().numpy(), 4, 0))
    assert torch.allclose(fq.detach(), torch.from_numpy(stored), atol=1e-6)
    fq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through


# -- quantized bundles ------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", list(bundle.QUANT_PRECISIONS))
def test_quantized_bundle_round_trip_within_half_a_step(codec, carphone, precision):
    data = bundle.dumps(codec, precision)
    back = bundle.loads(data)
    assert back.storage == precision and back.meta == META
    _, inner = split(data)
    plan = quant.storage_plan(codec.model, precision)
    axes = quant.quantized_weights(codec.model)
    assert set(plan) == set(axes)
    by_name = {t["name"]: t for t in inner["tensors"]}
    assert all(by_name[n]["dtype"] == f"q{bits}" for n, (bits, _) in plan.items())
    assert {t["dtype"] for n, t in by_name.items() if n not in axes} <= {"f16", "i64"}
    original, loaded = codec.model.state_dict(), back.model.state_dict()
    for name, axis in axes.items():
        assert by_name[name]["axis"] == axis == plan[name][1]
        scale = np.frombuffer(by_name[name]["scale"], "<f4")
        shape = [1] * original[name].ndim
        shape[axis] = -1
        err = (loaded[name] - original[name]).abs().numpy()
        assert (err <= scale.reshape(shape) / 2 * (1 + 1e-5) + 1e-7).all(), name
    bits = min(b for b, _ in plan.values())
    assert len(data) < len(bundle.dumps(codec, "f16")) * (0.6 if bits == 8 else 0.5)
    x = carphone[:2]
    diff = (back.project(x).frames - codec.project(x).frames).abs()
    assert diff.mean() < {8: 4e-3, 6: 1.5e-2, 5: 3e-2, 4: 6e-2}[bits]


def test_mixed_storage_plan():
    from codec.model import AutoEncoder, model_config

    model = AutoEncoder(model_config())
    plan = quant.storage_plan(model, "mixed")
    bits = {n: b for n, (b, _) in plan.items()}
    assert bits["encoder.0.0.weight"] == 8 and bits["to_rgb.weight"] == 8
    assert all(bits[f"encoder.{i}.0.weight"] == 4 for i in (1, 2, 3))
    assert bits["decoder.0.0.weight"] == 6  # the decoder's largest
    assert all(bits[f"decoder.{i}.0.weight"] == 8 for i in (1, 2, 3))
    assert plan["decoder.0.0.weight"][1] == 1 and plan["encoder.1.0.weight"][1] == 0  # output-channel axes
    with pytest.raises(ValueError):
        quant.storage_plan(model, "int3")


def test_bundle_storage_read_from_tensors(codec):
    assert bundle.loads(bundle.dumps(codec, "f32")).storage == "f32"
    assert bundle.loads(bundle.dumps(codec, "f16")).storage == "f16"
    assert bundle.loads(bundle.dumps(codec, "int8")).storage == "int8"
    assert bundle.loads(bundle.dumps(codec, "mixed")).storage == "mixed"


def _quantized_entry(inner: dict) -> dict:
    return next(t for t in inner["tensors"] if t["dtype"].startswith("q"))


@pytest.mark.parametrize("tamper,match", [
    (lambda e: e.update(scale=np.full(len(e["scale"]) // 4, np.nan, "<f4").tobytes()), "scale"),
    (lambda e: e.update(scale=np.zeros(len(e["scale"]) // 4, "<f4").tobytes()), "scale"),
    (lambda e: e.update(scale=np.full(len(e["scale"]) // 4, 1e30, "<f4").tobytes()), "scale"),
    (lambda e: e.update(scale=e["scale"][:-4]), "scales"),
    (lambda e: e.update(zero=np.full(len(e["zero"]), 100, np.int8).tobytes()), "zero-point"),
    (lambda e: e.update(zero=e["zero"] + b"\x00"), "zero-points"),
    (lambda e: e.update(data=e["data"][:-1]), "bytes"),
    (lambda e: e.update(data=bytes([64]) * len(e["data"])), "6-bit range"),
    (lambda e: e.update(axis=7), "axis"),
    (lambda e: e.update(axis=True), "axis"),
    (lambda e: e.update(dtype="f16"), "dtype"),
    (lambda e: e.update(dtype="q3"), "dtype"),
    (lambda e: e.pop("zero"), "malformed"),
])
def test_tampered_quantized_tensor_refused(codec, tamper, match):
    _, inner = split(bundle.dumps(codec, "int6"))
    tamper(_quantized_entry(inner))
    expect_bundle_error(repack(inner), match)


def test_quantized_dtype_on_an_integer_buffer_refused(codec):
    _, inner = split(bundle.dumps(codec, "int8"))
    q, plain = _quantized_entry(inner), next(t for t in inner["tensors"] if t["dtype"] == "i64")
    plain.update({k: q[k] for k in ("dtype", "axis", "scale", "zero", "data")})
    expect_bundle_error(repack(inner))


# -- updates share the quantizer -----------------------------------------------------------------------
def test_model_updates_use_the_bundle_quantizer(codec):
    trained = Codec(codec.model, codec.normalization).model
    import copy

    moved = copy.deepcopy(trained)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    data, mirrored, info = make_update(trained, moved, "full", 10**6, 1, 0)
    updated, _ = read_update(data, trained, 0)
    for (name, a), b, c in zip(moved.named_parameters(), mirrored.parameters(), updated.parameters()):
        delta = (a - dict(trained.named_parameters())[name]).detach().numpy()
        expected = quant.dequantize(quant.quantize(delta, 8, None, symmetric=True))
        got = (c - dict(trained.named_parameters())[name]).detach().numpy()
        assert np.allclose(got, expected, atol=1e-6), name
        assert torch.equal(b, c)


# -- fit and CLI ------------------------------------------------------------------------------------
def test_quantization_aware_fit_trains_its_last_part_through_the_rounding(carphone):
    frames = carphone[:6, :, :48, :64]
    result = fit(frames, ModelConfig(width=4, multipliers=(1, 2)), FitOptions(epochs=20, minutes=None, batch=6, progress=False,
                                                                              quantize="int4", train_precision="f32"))
    assert result.steps == 20
    assert result.qat_steps == pytest.approx(QAT_FRACTION * result.steps, abs=1)
    plain = fit(frames, ModelConfig(width=4, multipliers=(1, 2)), FitOptions(epochs=20, minutes=None, batch=6, progress=False,
                                                                             train_precision="f32"))
    assert plain.qat_steps == 0


def test_convert_cli(codec, tmp_path, capsys):
    src = tmp_path / "m.vsae"
    bundle.save(codec, src, "f16")
    out = tmp_path / "m8.vsae"
    assert vsae_main(["convert", str(src), "-o", str(out), "--precision", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    assert out.stat().st_size < src.stat().st_size * 0.6
    assert bundle.load(out).storage == "int8"
    assert vsae_main(["info", str(out)]) == 0
    assert "(int8)" in capsys.readouterr().out
    back = tmp_path / "back.vsae"
    assert vsae_main(["convert", str(out), "-o", str(back), "--precision", "f16"]) == 0
    assert "does not bring back" in capsys.readouterr().err
    broken = tmp_path / "broken.vsae"
    broken.write_bytes(src.read_bytes()[:-10])
    assert vsae_main(["convert", str(broken), "-o", str(tmp_path / "x.vsae"), "--precision", "int8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vsae: error:") and err.count("\n") == 1 and not (tmp_path / "x.vsae").exists()
