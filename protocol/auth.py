"""The optional shared secret: a receiver that holds one streams only from senders that hold it too.

A receiver started with a secret puts a fresh random `nonce` in its hello. The sender answers with
`Config.auth` = HMAC-SHA256(secret, transcript), where the transcript is a canonical msgpack encoding
of the nonce, the sender's hello (the model's SHA-256 and size) and every other config field. The
receiver checks the tag (constant-time compare) before it takes a single model chunk or touches a
cached model; the bundle it then accepts must hash to the SHA-256 the tag covers. So a tag binds one
model, one stream config and one session: it cannot be replayed for another model, another config,
or a later session (new nonce).

The secret is read from a file (`--secret-file`), never from argv (visible to every local user in
`ps`) or the environment (inherited by every child process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import stat
import sys
from pathlib import Path

import msgpack

from codec.errors import VsaeError

from .messages import NONCE_HEX, Config, Hello

DOMAIN = "vsae-auth-v1"  # bump with any change to the transcript
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
_CASTS = {"int": int, "float": float, "str": str, "bool": bool}


def read_secret(path: str | Path) -> tuple[bytes, list[str]]:
    """The secret in `path` (surrounding whitespace stripped) and any warnings about the file.

    Raises ValueError for an unreadable, empty, too short or implausibly long file.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"secret file {path} is not a regular file")
        if info.st_size > MAX_SECRET_BYTES:
            raise ValueError(f"secret file {path} is {info.st_size} bytes; a secret is at most {MAX_SECRET_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret file {path} holds {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
                         f"(e.g. head -c 32 /dev/urandom | base64 > {path})")
    warnings = []
    if info.st_mode & 0o077:
        warnings.append(f"secret file {path} is readable by other users (chmod 600 {path})")
    return secret, warnings


def new_nonce() -> str:
    return secrets.token_hex(NONCE_HEX // 2)


def transcript(nonce: str, hello: Hello, config: Config) -> bytes:
    """What the tag covers: canonical bytes, identical on both sides whatever types the sender used
    (an int fps and the float the receiver decodes encode alike)."""
    # Optional fields left at their default stay out, so a transcript without them is the one older peers make.
    fields = [[f.name, _CASTS[f.type](getattr(config, f.name))] for f in dataclasses.fields(Config)
              if f.name != "auth" and not (f.name in Config.omit_empty and getattr(config, f.name) in ("", 0))]
    items = [DOMAIN, nonce, hello.model_sha256, int(hello.model_bytes), fields]
    return msgpack.packb(items, use_bin_type=True)


def tag(secret: bytes, nonce: str, hello: Hello, config: Config) -> str:
    """The `Config.auth` a sender with `secret` sends (hex HMAC-SHA256 over the transcript)."""
    return hmac.new(secret, transcript(nonce, hello, config), hashlib.sha256).hexdigest()


def verify(secret: bytes, nonce: str, hello: Hello, config: Config) -> bool:
    """Whether `config.auth` is the tag for this nonce, hello and config (constant-time)."""
    if not config.auth or not nonce:
        return False
    return hmac.compare_digest(tag(secret, nonce, hello, config), config.auth)


def secret_option(path: str | None, prog: str) -> bytes | None:
    """The `--secret-file` option of `vsae send` / `vsae recv`: None when not given; warnings on stderr;
    any problem is one VsaeError line."""
    if not path:
        return None
    try:
        secret, warnings = read_secret(path)
    except ValueError as exc:
        raise VsaeError(f"--secret-file: {exc}") from None
    for warning in warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    return secret
