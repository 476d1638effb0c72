"""SSH into the boot-test guest with a throw-away key, run checks, power it off.

The key pair is made in memory for one boot and never written anywhere: the seed
carries the public half, paramiko holds the private half. The guest's host key is
checked against the keys cloud-init printed on the serial console (the console is
a channel the test controls; the forwarded port is merely local), so even the
throw-away login talks to the guest it booted.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..errors import GuestError

__all__ = ["CommandResult", "SshSession", "ThrowawayKey", "connect"]

log = logging.getLogger("imgsmith.boot")

MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class ThrowawayKey:
    """An ed25519 key pair for one boot test; ``repr`` never shows the private key."""

    public: str
    _private: paramiko.Ed25519Key

    @classmethod
    def generate(cls) -> ThrowawayKey:
        # paramiko cannot generate ed25519 keys; cryptography (its own dependency) can.
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
        return cls(f"{public} imgsmith-boot-test", paramiko.Ed25519Key.from_private_key(io.StringIO(pem)))

    @property
    def pkey(self) -> paramiko.PKey:
        return self._private

    def __repr__(self) -> str:
        return f"ThrowawayKey({self.public!r})"


class _ConsoleHostKeys(paramiko.MissingHostKeyPolicy):
    """Accept the guest's host key only if the console announced it (when it announced any)."""

    def __init__(self, announced: Collection[str]) -> None:
        self.announced = set(announced)
        self.verified = False

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        offered = f"{key.get_name()} {key.get_base64()}"
        if not self.announced:
            log.info("the console showed no SSH host keys; accepting %s unverified", key.get_name())
            return
        if offered not in self.announced:
            fingerprint = base64.b64encode(key.get_fingerprint()).decode()
            raise paramiko.SSHException(
                f"host key {key.get_name()} (md5 {fingerprint}) is not among those the guest printed on its console")
        self.verified = True


@dataclass(frozen=True)
class CommandResult:
    """Exit status (None when the command timed out) and stripped-of-nothing output."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


class SshSession:
    """An open SSH connection to the guest (see :func:`connect`)."""

    def __init__(self, client: paramiko.SSHClient, host_key_verified: bool) -> None:
        self.client = client
        self.host_key_verified = host_key_verified

    def run(self, command: str, timeout: float) -> CommandResult:
        """Run *command* through the login shell; stdout/stderr are capped at 64 KiB each."""
        start = time.monotonic()
        try:
            _stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            _stdin.close()
            out = stdout.read(MAX_OUTPUT).decode("utf-8", "replace")
            err = stderr.read(MAX_OUTPUT).decode("utf-8", "replace")
            rc: int | None = stdout.channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException) as exc:
            log.info("command %r did not finish: %s", command, exc)
            return CommandResult(None, "", f"no result within {timeout:.0f} s: {exc}", time.monotonic() - start)
        return CommandResult(rc, out, err, time.monotonic() - start)

    def poweroff(self) -> None:
        """Ask the guest to power off; the connection dropping is the expected answer."""
        try:
            channel = self.client.get_transport().open_session(timeout=10)  # type: ignore[union-attr]
            channel.exec_command("sudo -n systemctl poweroff || sudo -n poweroff")
            channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException, AttributeError) as exc:
            log.debug("poweroff over SSH: %s", exc)

    def close(self) -> None:
        self.client.close()


def _attempt(host: str, port: int, *, user: str, key: ThrowawayKey, policy: _ConsoleHostKeys,
             timeout: float) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(host, port=port, username=user, pkey=key.pkey, look_for_keys=False,
                       allow_agent=False, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
    except BaseException:
        client.close()
        raise
    return client


def connect(port: int, key: ThrowawayKey, *, user: str, deadline: float, host_keys: Collection[str] = (),
            host: str = "127.0.0.1") -> SshSession:
    """Log in, retrying until the monotonic *deadline* (sshd may still be starting)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        policy = _ConsoleHostKeys(host_keys)
        remaining = max(1.0, min(30.0, deadline - time.monotonic()))
        try:
            client = _attempt(host, port, user=user, key=key, policy=policy, timeout=remaining)
        except paramiko.AuthenticationException as exc:
            last = exc  # cloud-init may still be writing authorized_keys: retry
        except (OSError, EOFError, paramiko.SSHException) as exc:
            last = exc
            if "not among those the guest printed" in str(exc):
                break
        else:
            return SshSession(client, policy.verified)
        time.sleep(2.0)
    raise GuestError(f"SSH login as {user} failed: {last or 'no attempt before the deadline'}")
