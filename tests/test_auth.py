"""The shared-secret tag (protocol.auth): what it binds, that it survives the wire, and the secret file."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from protocol import auth
from protocol.messages import NONCE_HEX, Config, Hello, decode, encode

SECRET = b"correct horse battery staple"
OTHER = b"correct horse battery stapler"
NONCE = "00112233445566778899aabbccddeeff"
HELLO = Hello(role="sender", model_sha256=hashlib.sha256(b"model").hexdigest(), model_bytes=123_456)
CONFIG = Config(width=176, height=144, low_width=44, low_height=36, fps=29.97, scale=4, temporal=2, frames=120,
                codec="vp8", kbps=20.0, ticks=3003)


def signed(config: Config = CONFIG, secret: bytes = SECRET, nonce: str = NONCE, hello: Hello = HELLO) -> Config:
    return dataclasses.replace(config, auth=auth.tag(secret, nonce, hello, config))


def test_tag_verifies_after_the_wire():
    config = signed()
    assert len(config.auth) == 64 and auth.verify(SECRET, NONCE, HELLO, config)
    # The receiver checks the decoded messages, not the sender's objects.
    assert auth.verify(SECRET, NONCE, decode(encode(HELLO)), decode(encode(config)))


def test_tag_is_deterministic_and_excludes_itself():
    assert auth.tag(SECRET, NONCE, HELLO, CONFIG) == auth.tag(SECRET, NONCE, HELLO, signed())


def test_int_and_float_numbers_give_the_same_tag():
    # A sender may hold fps=30 (int); the receiver decodes 30.0. Same transcript, same tag.
    as_int = dataclasses.replace(CONFIG, fps=30, kbps=20)
    as_float = dataclasses.replace(CONFIG, fps=30.0, kbps=20.0)
    assert auth.tag(SECRET, NONCE, HELLO, as_int) == auth.tag(SECRET, NONCE, HELLO, as_float)
    assert auth.verify(SECRET, NONCE, HELLO, decode(encode(signed(as_int))))


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Config) if f.name != "auth"])
def test_every_config_field_is_bound(name):
    value = getattr(CONFIG, name)
    other = "h264" if isinstance(value, str) else value + (0.5 if isinstance(value, float) else 1)
    assert not auth.verify(SECRET, NONCE, HELLO, dataclasses.replace(signed(), **{name: other}))


def test_model_and_session_are_bound():
    config = signed()
    other_model = dataclasses.replace(HELLO, model_sha256=hashlib.sha256(b"another model").hexdigest())
    assert not auth.verify(SECRET, NONCE, other_model, config)  # a tag for one model cannot serve another
    assert not auth.verify(SECRET, NONCE, dataclasses.replace(HELLO, model_bytes=123_457), config)
    assert not auth.verify(SECRET, "f" * NONCE_HEX, HELLO, config)  # nor be replayed in a later session
    assert not auth.verify(OTHER, NONCE, HELLO, config)  # nor be made without the secret


def test_missing_tag_or_nonce_never_verifies():
    assert not auth.verify(SECRET, NONCE, HELLO, CONFIG)
    assert not auth.verify(SECRET, "", HELLO, signed(nonce=""))


def test_nonces_are_fresh_hex():
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == NONCE_HEX and decode(encode(Hello(role="receiver", nonce=n))).nonce == n for n in nonces)


def test_read_secret(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"  " + SECRET + b"\n")
    path.chmod(0o600)
    assert auth.read_secret(path) == (SECRET, [])
    path.chmod(0o644)
    secret, warnings = auth.read_secret(path)
    assert secret == SECRET and len(warnings) == 1 and "chmod 600" in warnings[0]


@pytest.mark.parametrize("content, match", [
    (b"", "0 bytes"),
    (b"short secret\n", "at least 16"),
    (b" \n\t\n", "0 bytes"),
    (b"x" * (auth.MAX_SECRET_BYTES + 1), "at most"),
])
def test_read_secret_refuses_weak_or_odd_files(tmp_path, content, match):
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        auth.read_secret(path)


def test_read_secret_missing_or_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        auth.read_secret(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a regular file"):
        auth.read_secret(tmp_path)
    if os.path.exists("/dev/zero"):  # a device would otherwise be read forever
        with pytest.raises(ValueError, match="not a regular file"):
            auth.read_secret("/dev/zero")
