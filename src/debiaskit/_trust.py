"""Trust in records, the way Jupyter trusts notebooks: what this user writes is signed, and only signed records
(or ones the user trusts explicitly) may make debiaskit import code.

A record (``run.json``, ``ffw.json``) that names a user model (``package.module:factory``) makes debiaskit import
that module and call the factory when the folder is loaded - code named by a file. A folder is data: it may come
from a colleague, a download or a shared disk. So every record debiaskit writes carries a ``signature``: an
HMAC-SHA256 of the record's canonical JSON (sorted keys, no spaces, the ``signature`` field left out) under a
secret key of this user. Loading a record that needs an import is refused unless its signature verifies with this
user's key or the user says so (``--trust-code`` / ``trust_code=True``, or ``debiaskit trust FOLDER``, which
signs it after review). Zoo models run no code a record names and need no trust.

The key: 32 random bytes (hex) in ``signing.key`` under the user's configuration folder (``platformdirs``;
``$DEBIASKIT_CONFIG_DIR`` overrides it, which the tests use), created on first use atomically and exclusively
(a temporary file linked into place: never a half-written key, never a second key when two processes start at
once), mode 0600, in a folder that only its owner can write. A key file that is a symbolic link, is readable or
writable by others, belongs to someone else or does not hold a key is refused (never followed, never repaired
silently): someone who can read it can sign records for this user, someone who can write it can swap it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any

import platformdirs

from ._io import json_safe
from .errors import ConfigError

CONFIG_ENV = "DEBIASKIT_CONFIG_DIR"
KEY_FILE = "signing.key"
SIGNATURE = "signature"
ALGORITHM = "hmac-sha256"
_KEY_TEXT = re.compile(r"^[0-9a-f]{64}\n?$")


def config_dir() -> Path:
    """This user's debiaskit configuration folder (``$DEBIASKIT_CONFIG_DIR`` or the platform's config folder)."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir("debiaskit"))


def key_path() -> Path:
    return config_dir() / KEY_FILE


def _check_folder(folder: Path) -> None:
    """The key's folder must be a real folder that only this user can write (else its key could be swapped)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot create debiaskit's configuration folder {folder}: {exc.strerror}; set "
            f"{CONFIG_ENV} to a folder of yours"
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"{folder} (debiaskit's configuration folder) is not a folder (a symbolic link or a file); "
            f"remove it or set {CONFIG_ENV} to a folder of yours"
        )
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise ConfigError(
            f"{folder} (debiaskit's configuration folder, which holds your signing key) can be written "
            f"by other users (mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}); make it "
            f"yours alone (chmod 700 {folder}) or set {CONFIG_ENV} to a folder of yours"
        )


def _create_key(path: Path) -> None:
    """Write a new key next to ``path`` and link it into place: no half-written key, no replaced key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if anything (a file, a planted symlink) is there already: never replaced
        except FileExistsError:
            pass  # another process created it first: read theirs
    finally:
        os.unlink(tmp)


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: a symbolic link, never followed
        raise ConfigError(
            f"your signing key {path} cannot be read safely ({exc.strerror}; a symbolic link is never "
            f"followed); remove it (a new key is then created, and your earlier records need "
            f"`debiaskit trust` again)"
        ) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(
                f"your signing key {path} must be a file of yours readable by you alone; it has mode "
                f"{stat.S_IMODE(info.st_mode):04o} and owner uid {info.st_uid}: run `chmod 600 {path}` "
                "if it is yours, else remove it (a new key is then created)"
            )
        text = os.read(fd, 200).decode("ascii", errors="replace")
    finally:
        os.close(fd)
    if not _KEY_TEXT.match(text):
        raise ConfigError(
            f"{path} is not a debiaskit signing key (expected 64 hexadecimal characters); remove it "
            "(a new key is then created, and your earlier records need `debiaskit trust` again)"
        )
    return bytes.fromhex(text.strip())


def user_key() -> bytes:
    """This user's signing key, created on first use."""
    path = key_path()
    _check_folder(path.parent)
    try:
        return _read_key(path)
    except FileNotFoundError:
        _create_key(path)
    return _read_key(path)


def key_id(key: bytes) -> str:
    """A short public name of a key (a digest of it): tells "signed with another key" from "changed"."""
    return hashlib.sha256(b"debiaskit key id|" + key).hexdigest()[:16]


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes that are signed: the record's JSON with sorted keys and no spaces, without its signature."""
    body = {k: v for k, v in json_safe(record).items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign(record: dict[str, Any]) -> dict[str, str]:
    """The ``signature`` field for ``record`` under this user's key."""
    key = user_key()
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(key),
        "value": hmac.new(key, canonical(record), hashlib.sha256).hexdigest(),
    }


def signature_state(record: dict[str, Any]) -> str:
    """``"signed"`` (by this user, unchanged since), ``"changed"`` (this user's key, but the record was changed
    after it was signed), ``"other-key"`` (signed by another user or an earlier key) or ``"unsigned"``."""
    sig = record.get(SIGNATURE)
    if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM or not isinstance(sig.get("value"), str):
        return "unsigned"
    key = user_key()
    if sig.get("key_id") != key_id(key):
        return "other-key"
    try:
        expected = hmac.new(key, canonical(record), hashlib.sha256).hexdigest()
    except ValueError:  # NaN or inf in a hand-edited file: not what was signed
        return "changed"
    return "signed" if hmac.compare_digest(expected, sig["value"]) else "changed"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "CONFIG_ENV",
    "KEY_FILE",
    "SIGNATURE",
    "canonical",
    "config_dir",
    "file_sha256",
    "key_id",
    "key_path",
    "sign",
    "signature_state",
    "user_key",
]
