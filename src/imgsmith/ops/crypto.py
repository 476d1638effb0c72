"""Password hashing with the host's libcrypt (libxcrypt on Debian 12: md5, sha256, sha512, yescrypt).

Called in-process through ctypes so that no password ever reaches a child
process's argv or environment. Salts come from libcrypt's own CSPRNG (a fresh one
each call).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

from ..errors import UsageError

__all__ = ["HASH_PREFIXES", "hash_password", "is_hashed", "verify_password"]

HASH_PREFIXES = {"md5": "$1$", "sha256": "$5$", "sha512": "$6$", "yescrypt": "$y$"}
_HASHED = re.compile(r"^\$(1|5|6|y)\$[^\s:]+$")

_lib: ctypes.CDLL | None = None


def _libcrypt() -> ctypes.CDLL:
    global _lib  # noqa: PLW0603 - load the library once
    if _lib is None:
        name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.crypt.restype = ctypes.c_char_p
        lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.crypt_gensalt.restype = ctypes.c_char_p
        lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
        _lib = lib
    return _lib


def hash_password(password: str, method: str) -> str:
    """Hash *password* with *method* (md5/sha256/sha512/yescrypt) and a fresh random salt."""
    lib = _libcrypt()
    prefix = HASH_PREFIXES[method].encode()
    salt = lib.crypt_gensalt(prefix, 0, None, 0)
    if not salt:
        raise UsageError(f"the host's libcrypt cannot make {method} hashes")
    out = lib.crypt(password.encode(), salt)
    if not out or out.startswith(b"*"):
        raise UsageError(f"the host's libcrypt failed to hash with {method}")
    return str(out.decode())


def verify_password(password: str, hashed: str) -> bool:
    out = _libcrypt().crypt(password.encode(), hashed.encode())
    return bool(out) and out.decode() == hashed


def is_hashed(value: str) -> bool:
    return bool(_HASHED.match(value))
