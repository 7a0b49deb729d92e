import pytest
import torch

from codec.errors import VsaeError
from codec.model import DEFAULT_MODEL, MAX_STAGES, MAX_WIDTH, MODELS, AutoEncoder, ModelConfig, Normalization, model_config


@pytest.mark.parametrize(
    "config",
    [ModelConfig(width=8, multipliers=(1, 2, 4)), ModelConfig(width=4, multipliers=(1, 2, 4, 8)), ModelConfig(width=2, multipliers=(3,))],
)
def test_encoder_decoder_shapes(config):
    model = AutoEncoder(config).eval()
    s = config.stride
    h, w = 2 * s, 3 * s
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    assert z.shape == (2, config.width * config.multipliers[-1], h // s, w // s)
    assert z.shape[1] == config.latent_channels
    assert y.shape == x.shape


def test_stride_and_latent_channels():
    cfg = ModelConfig(width=16, multipliers=(1, 2, 4, 8))
    assert cfg.stages == 4 and cfg.stride == 16 and cfg.latent_channels == 128


@pytest.mark.parametrize("h,w", [(37, 53), (8, 8), (1, 1), (64, 17)])
def test_forward_returns_input_size(tiny_codec, h, w):
    model = tiny_codec.model
    with torch.no_grad():
        y = model(torch.rand(1, 3, h, w))
    assert y.shape == (1, 3, h, w)


@pytest.mark.parametrize("h,w", [(37, 53), (16, 24), (9, 31)])
def test_pad_then_crop_is_identity(h, w):
    model = AutoEncoder(ModelConfig(width=4, multipliers=(1, 2, 4)))
    x = torch.rand(2, 3, h, w)
    xp, size = model.pad(x)
    assert size == (h, w)
    assert xp.shape[-2] % 8 == 0 and xp.shape[-1] % 8 == 0
    assert xp.shape[-2] - h < 8 and xp.shape[-1] - w < 8
    assert torch.equal(model.crop(xp, size), x)


def test_pad_is_noop_at_multiple_of_stride():
    model = AutoEncoder(ModelConfig(width=4, multipliers=(1, 2)))
    x = torch.rand(1, 3, 12, 20)
    xp, size = model.pad(x)
    assert xp is x and size == (12, 20)


def test_registry():
    assert DEFAULT_MODEL in MODELS
    paper = MODELS["vsae-paper"]
    assert paper.width == 64 and paper.multipliers == (1, 2, 4, 8, 8, 12) and paper.stride == 64
    assert paper.latent_channels == 64 * 12
    assert MODELS["vsae-s16"].stride == 16 and MODELS["vsae-s32"].stride == 32
    assert model_config("vsae-paper") == paper
    narrow = model_config("vsae-paper", width=8)
    assert narrow.width == 8 and narrow.multipliers == paper.multipliers
    with pytest.raises(VsaeError):
        model_config("no-such-model")
    with pytest.raises(VsaeError):
        model_config("vsae-s16", width=0)


def test_config_dict_round_trip():
    for cfg in MODELS.values():
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg


GOOD = {"width": 8, "multipliers": [1, 2, 4], "encoder_kernel": 5, "decoder_kernel": 4}


@pytest.mark.parametrize(
    "change",
    [
        {"width": 0},
        {"width": MAX_WIDTH + 1},
        {"width": -3},
        {"width": 8.0},
        {"width": True},
        {"width": "8"},
        {"multipliers": []},
        {"multipliers": [1] * (MAX_STAGES + 1)},
        {"multipliers": [1, 0]},
        {"multipliers": [1, 33]},
        {"multipliers": [1, 2.0]},
        {"multipliers": "124"},
        {"encoder_kernel": 4},
        {"decoder_kernel": 3},
        {"extra": 1},
    ],
)
def test_from_dict_rejects(change):
    with pytest.raises(VsaeError):
        ModelConfig.from_dict({**GOOD, **change})


def test_from_dict_rejects_missing_key_and_non_dict():
    with pytest.raises(VsaeError):
        ModelConfig.from_dict({k: v for k, v in GOOD.items() if k != "width"})
    with pytest.raises(VsaeError):
        ModelConfig.from_dict([1, 2, 3])


def test_normalization_round_trip():
    frames = torch.rand(4, 3, 10, 12) * torch.tensor([0.5, 1.0, 0.2]).view(1, 3, 1, 1)
    norm = Normalization.of(frames)
    x = norm.apply(frames)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(norm.invert(x), frames, atol=1e-6)
