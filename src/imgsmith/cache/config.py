"""Where this host's remote layer cache is and how far it is trusted: per host, never per definition.

A definition says what to build; which shared cache a machine reads and writes, and
whose signatures it believes, belong to the machine (a CI runner, a laptop). In order
of precedence: the command line (``--cache-remote URL``, ``--cache-push`` /
``--no-cache-push``, ``--cache-pull-only``, ``--cache-trust-unsigned``), the
environment (``IMGSMITH_CACHE_REMOTE``), then the user config file
(``$IMGSMITH_CONFIG``, else ``$XDG_CONFIG_HOME/imgsmith/config.toml``, else
``~/.config/imgsmith/config.toml``)::

    [cache]
    remote = "s3://bucket/prefix?endpoint=http://127.0.0.1:9000"   # or oci://registry:5000/repo
    push = true                       # push layers built here (default true when a signing key is set)
    pull-only = false                 # true: this host never writes to the remote (see below)
    signing-key = "~/.config/imgsmith/cache-key"                   # Ed25519 PEM: sign what we push
    trusted-keys = ["~/.config/imgsmith/team.pub"]                 # pull only what these signed
    trust-unsigned = false
    shared-secret-key = "~/.config/imgsmith/team-secret"           # see secret_key(): secret layers shared

Not pushing and pulling only are two things. ``push = false`` / ``--no-cache-push``: this
build uploads no layer and no base image, but the host still takes part in keeping the
cache: a pull records that the entry was used (S3: ``PREFIX/used/KEY``), so
``cache prune --remote --older-than`` keeps what the farm still uses. ``pull-only = true``
/ ``--cache-pull-only`` (an untrusted runner, a fork's CI job): the host never writes to
the remote at all — no blob, no entry, no use record, no prune — and ``--cache-push``
is refused with it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import UsageError

__all__ = ["RemoteSettings", "RemoteURL", "config_path", "load_settings", "parse_remote_url", "shared_secret_key"]


@dataclass(frozen=True)
class RemoteURL:
    """``s3://bucket/prefix?endpoint=…&region=…`` or ``oci://host[:port]/repo[?insecure=1]``, parsed."""

    scheme: str  # "s3" or "oci"
    host: str  # the bucket (s3) or the registry host[:port] (oci)
    path: str  # the key prefix (s3, may be empty) or the repository (oci)
    params: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text


def parse_remote_url(text: str) -> RemoteURL:
    parts = urlsplit(text)
    if parts.scheme not in ("s3", "oci") or not parts.netloc:
        raise UsageError(f"cache remote {text!r}: give s3://BUCKET/PREFIX?endpoint=URL or oci://REGISTRY/REPOSITORY")
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path.strip("/")
    if parts.scheme == "oci" and not path:
        raise UsageError(f"cache remote {text!r}: an OCI remote needs a repository (oci://REGISTRY/REPOSITORY)")
    known = {"s3": {"endpoint", "region"}, "oci": {"insecure"}}[parts.scheme]
    unknown = sorted(set(params) - known)
    if unknown:
        raise UsageError(f"cache remote {text!r}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return RemoteURL(parts.scheme, parts.netloc, path, params, text)


@dataclass(frozen=True)
class RemoteSettings:
    """The remote cache this host uses for one build."""

    url: RemoteURL
    push: bool
    signing_key: Path | None = None
    trusted_keys: tuple[Path, ...] = ()
    trust_unsigned: bool = False
    pull_only: bool = False  # never write to the remote (not even use records): see the module docstring


def config_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("IMGSMITH_CONFIG"):
        return Path(env["IMGSMITH_CONFIG"])
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(xdg) / "imgsmith" / "config.toml"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    section = data.get("cache", {})
    if not isinstance(section, dict):
        raise UsageError(f"{path}: [cache] must be a table")
    known = {"remote", "push", "pull-only", "signing-key", "trusted-keys", "trust-unsigned", "shared-secret-key"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise UsageError(f"{path}: [cache] has no setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return section


def _path(value: object, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: expected a file name")
    return (base / Path(value).expanduser()).resolve()


def load_settings(*, remote: str | None = None, push: bool | None = None, pull_only: bool = False,
                  trust_unsigned: bool = False, env: dict[str, str] | None = None) -> RemoteSettings | None:
    """The settings for this run, or None when no remote cache is configured (see the module docstring)."""
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    section = _read_config(path)
    text = remote or env.get("IMGSMITH_CACHE_REMOTE") or section.get("remote")
    if not text or text == "none":
        return None
    if not isinstance(text, str):
        raise UsageError(f"{path}: [cache] remote must be a string")
    url = parse_remote_url(text)
    signing = _path(section["signing-key"], f"{path}: signing-key", path.parent) if "signing-key" in section else None
    keys = section.get("trusted-keys", [])
    if not isinstance(keys, list):
        raise UsageError(f"{path}: [cache] trusted-keys must be a list of file names")
    trusted = tuple(_path(k, f"{path}: trusted-keys", path.parent) for k in keys)
    configured_push = section.get("push", signing is not None)
    for name, value in (("push", configured_push), ("pull-only", section.get("pull-only", False))):
        if not isinstance(value, bool):
            raise UsageError(f"{path}: [cache] {name} must be true or false")
    pull_only = pull_only or section.get("pull-only") is True
    if pull_only and push:
        raise UsageError("--cache-push: this host is pull-only (--cache-pull-only, or pull-only = true in "
                         f"{path}): it never writes to the remote")
    wanted = configured_push if push is None else push
    return RemoteSettings(url, wanted and not pull_only, signing, trusted,
                          trust_unsigned or section.get("trust-unsigned") is True, pull_only)


SHARED_KEY_ENV = "IMGSMITH_CACHE_SHARED_KEY_FILE"
_SHARED_KEYS: dict[tuple[str, int, int], bytes] = {}  # per process, by (path, inode, mtime)


def shared_secret_key(env: dict[str, str] | None = None) -> bytes | None:
    """The team's shared key for hashing secrets into layer keys, or None (each host keys its own).

    Without it a secret enters a layer key through a random per-host key, so no two hosts
    share a secret-bearing layer and such layers are never pushed. A team that wants them
    shared gives every builder the same key file — ``$IMGSMITH_CACHE_SHARED_KEY_FILE``, else
    ``shared-secret-key`` in ``[cache]`` — never the definition, which is shared more widely
    than the cache. The key is 32 bytes or more (``head -c 32 /dev/urandom > FILE``, mode 0600).
    """
    env = dict(os.environ) if env is None else env
    if env.get(SHARED_KEY_ENV):
        path, where = Path(env[SHARED_KEY_ENV]).expanduser(), SHARED_KEY_ENV
    else:
        cfg = config_path(env)
        section = _read_config(cfg)
        if "shared-secret-key" not in section:
            return None
        path, where = _path(section["shared-secret-key"], f"{cfg}: shared-secret-key", cfg.parent), f"{cfg}"
    try:
        st = path.stat()
        memo = (os.fspath(path), st.st_ino, st.st_mtime_ns)
        if memo not in _SHARED_KEYS:
            data = path.read_bytes()
            # A text key (hex, base64) may end in a newline; random bytes are taken as they are.
            _SHARED_KEYS[memo] = data.strip() if data.isascii() and data.strip().isalnum() else data
    except OSError as exc:
        raise UsageError(f"shared secret key {path} ({where}): {exc.strerror or exc}") from exc
    key = _SHARED_KEYS[memo]
    if len(key) < 32:
        raise UsageError(f"shared secret key {path} ({where}): {len(key)} bytes; give 32 or more "
                         "(head -c 32 /dev/urandom > FILE)")
    return key
