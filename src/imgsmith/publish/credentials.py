"""Alibaba Cloud and Tencent Cloud credentials, from the places their own tools read them.

Read here, not by the SDKs' default chains, for two reasons: those chains end by asking the
instance metadata service (100.100.100.200, 169.254.0.23), a network call from a build machine
that is not a cloud instance, and a missing key must be one line naming where we looked, before
anything is uploaded. The order is each cloud's documented one: the environment first, then the
CLI's configuration file. A :class:`Keys` never shows its secret (``repr`` masks it); it goes to
the SDK's in-process client only, never to a record, an event, a log line or a command line.
"""

from __future__ import annotations

import configparser
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .base import PublishError, mask

__all__ = ["Keys", "aliyun_keys", "tencent_keys"]


@dataclass(frozen=True)
class Keys:
    key_id: str
    secret: str = field(repr=False)
    token: str = field(default="", repr=False)
    source: str = ""  # where they came from: an environment variable's name or a file

    def describe(self) -> str:
        return f"{self.source} (key id {mask(self.key_id)})"


_ALIYUN_ENV = (("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_SECURITY_TOKEN"),
               ("ALICLOUD_ACCESS_KEY_ID", "ALICLOUD_ACCESS_KEY_SECRET", "ALICLOUD_SECURITY_TOKEN"),
               ("ALICLOUD_ACCESS_KEY", "ALICLOUD_SECRET_KEY", "ALICLOUD_SECURITY_TOKEN"))
_TENCENT_ENV = ("TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY", "TENCENTCLOUD_SESSION_TOKEN")


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def aliyun_keys(name: str, env: Mapping[str, str] | None = None) -> Keys:
    """The environment (ALIBABA_CLOUD_*, then the Terraform provider's ALICLOUD_*), then the aliyun CLI's
    ``~/.aliyun/config.json`` profile (``ALIBABA_CLOUD_PROFILE`` / ``ALICLOUD_PROFILE``, else its current one)."""
    env = os.environ if env is None else env
    for kid, secret, token in _ALIYUN_ENV:
        if env.get(kid) and env.get(secret):
            return Keys(env[kid], env[secret], env.get(token, ""), kid)
    path = _home(env) / ".aliyun" / "config.json"
    where = f"{', '.join(e[0] for e in _ALIYUN_ENV)} or {path}"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PublishError(f"{name}: no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                           f"ALIBABA_CLOUD_ACCESS_KEY_SECRET, or run `aliyun configure` ({path})") from None
    except (OSError, ValueError) as exc:
        raise PublishError(f"{name}: {path}: not readable as the aliyun CLI's JSON: {exc}") from None
    wanted = env.get("ALIBABA_CLOUD_PROFILE") or env.get("ALICLOUD_PROFILE") or doc.get("current") or "default"
    profile = next((p for p in doc.get("profiles") or [] if isinstance(p, dict) and p.get("name") == wanted), None)
    if profile is None:
        raise PublishError(f"{name}: {path} has no profile {wanted!r} (looked in {where})")
    mode = profile.get("mode", "AK")
    if mode not in ("AK", "StsToken") or not profile.get("access_key_id") or not profile.get("access_key_secret"):
        raise PublishError(f"{name}: {path}: profile {wanted!r} is mode {mode} without an access key: imgsmith "
                           "reads AK and StsToken profiles")
    return Keys(str(profile["access_key_id"]), str(profile["access_key_secret"]),
                str(profile.get("sts_token") or "") if mode == "StsToken" else "", f"{path} profile {wanted}")


def tencent_keys(name: str, env: Mapping[str, str] | None = None) -> Keys:
    """TENCENTCLOUD_SECRET_ID/KEY, then tccli's ``~/.tccli/default.credential``, then the SDK's own profile file
    ``~/.tencentcloud/credentials`` ([default] secret_id/secret_key)."""
    env = os.environ if env is None else env
    kid, secret, token = _TENCENT_ENV
    if env.get(kid) and env.get(secret):
        return Keys(env[kid], env[secret], env.get(token, ""), kid)
    tccli = _home(env) / ".tccli" / "default.credential"
    try:
        doc = json.loads(tccli.read_text())
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError) as exc:
        raise PublishError(f"{name}: {tccli}: not readable as tccli's JSON: {exc}") from None
    if isinstance(doc, dict) and doc.get("secretId") and doc.get("secretKey"):
        return Keys(str(doc["secretId"]), str(doc["secretKey"]), str(doc.get("token") or ""), str(tccli))
    ini = _home(env) / ".tencentcloud" / "credentials"
    parser = configparser.ConfigParser()
    try:
        parser.read_string(ini.read_text())
    except FileNotFoundError:
        pass
    except (OSError, configparser.Error) as exc:
        raise PublishError(f"{name}: {ini}: not readable: {exc}") from None
    if parser.has_option("default", "secret_id") and parser.has_option("default", "secret_key"):
        return Keys(parser["default"]["secret_id"], parser["default"]["secret_key"], "", str(ini))
    raise PublishError(f"{name}: no Tencent Cloud credentials: set TENCENTCLOUD_SECRET_ID and "
                       f"TENCENTCLOUD_SECRET_KEY, or run `tccli configure` ({tccli})")
