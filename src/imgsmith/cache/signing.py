"""Ed25519 signatures on remote cache entries: who may put a layer into every image built from it.

A shared cache is a way into every image built from it, so an entry is used only if a
key the host trusts signed it. The private key is a PEM (PKCS#8) file kept by the
builders that may push; the public keys are one-line OpenSSH (``ssh-ed25519 AAAA…``)
or PEM files. A key is named by its id: the first 16 hex digits of the sha256 of its
raw 32 bytes, written into each entry so a reader knows which key to check with.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UsageError
from ..host.files import atomic_write

__all__ = ["Signer", "TrustedKeys", "canonical_bytes", "generate_keypair", "key_id"]


def canonical_bytes(doc: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the entry's canonical JSON without its ``signature`` field."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """A builder's private key: signs the entries it pushes."""

    private: Ed25519PrivateKey

    @classmethod
    def load(cls, path: Path) -> Signer:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise UsageError(f"cache signing key {path}: {exc.strerror or exc}") from exc
        except (ValueError, TypeError) as exc:
            raise UsageError(f"cache signing key {path}: not an unencrypted PEM private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise UsageError(f"cache signing key {path}: not an Ed25519 key")
        return cls(key)

    @property
    def id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, doc: dict[str, Any]) -> dict[str, Any]:
        """*doc* with ``signer`` (this key's id) and ``signature`` (base64 of Ed25519 over the rest)."""
        body = {**{k: v for k, v in doc.items() if k != "signature"}, "signer": self.id}
        sig = self.private.sign(canonical_bytes(body))
        return {**body, "signature": base64.b64encode(sig).decode("ascii")}


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys this host accepts entries from, by key id."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def load(cls, paths: list[Path]) -> TrustedKeys:
        keys: dict[str, Ed25519PublicKey] = {}
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise UsageError(f"trusted cache key {path}: {exc.strerror or exc}") from exc
            try:
                key = (serialization.load_ssh_public_key(data) if data.startswith(b"ssh-")
                       else serialization.load_pem_public_key(data))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"trusted cache key {path}: not an OpenSSH or PEM public key ({exc})") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise UsageError(f"trusted cache key {path}: not an Ed25519 key")
            keys[key_id(key)] = key
        return cls(keys)

    def problem(self, doc: dict[str, Any]) -> str | None:
        """Why *doc* is not signed by a trusted key (one phrase), or None when it is."""
        sig, signer = doc.get("signature"), doc.get("signer")
        if not isinstance(sig, str) or not isinstance(signer, str):
            return "the entry is not signed"
        key = self.keys.get(signer)
        if key is None:
            return f"the entry is signed by key {signer}, which this host does not trust"
        try:
            key.verify(base64.b64decode(sig, validate=True), canonical_bytes(doc))
        except (InvalidSignature, ValueError):
            return f"the entry's signature by key {signer} does not match its content"
        return None


def generate_keypair(path: Path) -> tuple[Path, str]:
    """Write a new private key to *path* (mode 0600) and its public key to *path*.pub; (pub path, key id)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, pem, mode=0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub = path.with_name(path.name + ".pub")
    atomic_write(pub, public + f" imgsmith-cache-{key_id(private.public_key())}\n".encode())
    os.chmod(path, 0o600)
    return pub, key_id(private.public_key())
