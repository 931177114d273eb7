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


def signing_key() -> bytes:
    """``$GRAMPROMPT_SIGNING_KEY``, else this machine's key (made on first use, readable by its owner only)."""
    if os.environ.get(ENV):
        try:
            return bytes.fromhex(os.environ[ENV])
        except ValueError as err:
            raise GramError(f"${ENV} must be a hex string") from err
    path = key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:  # two processes racing: O_EXCL lets one write, the other reads it
        f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


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
