"""Pickles this project wrote itself, and only those, are loaded.

Some stage outputs are library objects that only pickle can store (the fitted UMAP reducer and
HDBSCAN clusterer of CHC). Unpickling runs code, and an output folder may come from anywhere, so each
such file starts with an HMAC-SHA256 of its pickle under a secret key kept outside every output
folder: ``$GRAMPROMPT_SIGNING_KEY`` (hex; set it on every node of a cluster that shares outputs) or a
random key created once in the cache folder. A file whose signature does not match is refused before
any byte of it is unpickled.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

from .data import cache_dir
from .errors import GramError

ENV = "GRAMPROMPT_SIGNING_KEY"
MAGIC = b"gramprompt-signed-pickle-v1\n"


def key_file() -> Path:
    return cache_dir() / "signing.key"


KEY_BYTES = 32
MIN_KEY_BYTES = 16


def _parse_key(text: str, where: str) -> bytes:
    """A key of at least ``MIN_KEY_BYTES`` bytes from hex; an empty or malformed one is refused (an empty
    key would let anyone sign a pickle)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) < MIN_KEY_BYTES:
        raise GramError(f"{where} must hold a hex key of at least {MIN_KEY_BYTES} bytes; it is empty or malformed "
                        f"(a write cut short, e.g. by a full disk?). Delete it to make a new key (pickles signed "
                        f"with the old one are then computed again)")
    return key


def signing_key() -> bytes:
    """``$GRAMPROMPT_SIGNING_KEY``, else this machine's key (made on first use, readable by its owner only)."""
    if os.environ.get(ENV):
        return _parse_key(os.environ[ENV], f"${ENV}")
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # written whole under a temporary name, then linked into place: the key file appears complete or not
        # at all (a full disk leaves no empty key), and of two racing processes the first link wins
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    return _parse_key(path.read_text(), str(path))


def _mac(data: bytes) -> bytes:
    return hmac.new(signing_key(), data, hashlib.sha256).hexdigest().encode()


def dump(obj: Any, path: str | os.PathLike) -> None:
    """Pickle ``obj`` to ``path`` with its signature, atomically (a kill leaves the old file or none)."""
    path = Path(path)
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(MAGIC + _mac(data) + b"\n" + data)
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` if its signature matches this key; else a :class:`GramError`, nothing unpickled."""
    path = Path(path)
    raw = path.read_bytes()
    head, _, data = raw[len(MAGIC):].partition(b"\n")
    if not raw.startswith(MAGIC) or not hmac.compare_digest(head, _mac(data)):
        raise GramError(f"{path} is not signed with this machine's key ({key_file()} or ${ENV}); loading it "
                        f"could run code from elsewhere. Delete it to compute it again, or set ${ENV} to the key "
                        "of the machine that made it")
    return pickle.loads(data)
