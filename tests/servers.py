"""Real servers for the publish tests, each started on 127.0.0.1 from a temporary directory.

- OpenStack Glance from PyPI, in its own venv (scripts/glance-venv.sh), under gunicorn with a
  sqlite database, the file store, no Keystone, and a policy that lets the anonymous context
  do everything (there is no Keystone to give it roles);
- moto's S3 server (moto[server], a dev dependency);
- Debian's docker-registry (distribution), filesystem storage.

Each ``start_*`` returns a :class:`Server` whose ``stop()`` ends the process it started (and
only that one). A server that does not answer within its limit fails the test with its log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLANCE_VENV = Path(os.environ.get("IMGSMITH_GLANCE_VENV", "/var/tmp/imgsmith-glance-venv"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound then released: refused, not filtered)."""
    return free_port()


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    root: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: an error status is still an answer
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"{url}: no answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _spawn(argv: list[str], root: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=root)
    return proc, log


# --- Glance ---------------------------------------------------------------------------------------

GLANCE_CONF = """\
[DEFAULT]
enabled_backends = fs:file
bind_host = 127.0.0.1
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {root}/images
[os_glance_staging_store]
filesystem_store_datadir = {root}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {root}/tasks
[database]
connection = sqlite:///{root}/glance.sqlite
[paste_deploy]
flavor =
config_file = {venv}/etc/glance/glance-api-paste.ini
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
policy_file = {root}/policy.yaml
"""


def glance_available() -> str | None:
    """Why the Glance server cannot run here, or None."""
    if not (GLANCE_VENV / "bin" / "gunicorn").exists():
        return f"no Glance venv at {GLANCE_VENV} (run scripts/glance-venv.sh, part of make setup)"
    return None


def _policy(root: Path) -> Path:
    """Every Glance rule set to "" (anyone): the generator lists the rule names of this Glance."""
    sample = root / "policy.sample.yaml"
    subprocess.run([GLANCE_VENV / "bin" / "oslopolicy-sample-generator", "--namespace", "glance",
                    "--output-file", sample], check=True, capture_output=True)
    names = [line.split('"')[1] for line in sample.read_text().splitlines() if line.startswith('#"')]
    path = root / "policy.yaml"
    path.write_text("".join(f'"{n}": ""\n' for n in names))
    return path


def start_glance(root: Path) -> Server:
    for d in ("images", "staging", "tasks", "conf"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _policy(root)
    conf = root / "conf" / "glance-api.conf"
    conf.write_text(GLANCE_CONF.format(root=root, venv=GLANCE_VENV))
    subprocess.run([GLANCE_VENV / "bin" / "glance-manage", "--config-file", conf, "db_sync"], check=True,
                   capture_output=True, cwd=root)
    port = free_port()
    proc, log = _spawn([os.fspath(GLANCE_VENV / "bin" / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "1",
                        "--timeout", "600", "glance.wsgi.api:application"], root,
                       {"OS_GLANCE_CONFIG_DIR": os.fspath(root / "conf")})
    url = f"http://127.0.0.1:{port}/"
    _wait(url, proc, log, 120)
    return Server(url, proc, log, root)


# --- moto (S3) ------------------------------------------------------------------------------------

def start_moto(root: Path) -> Server:
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc, log = _spawn([os.fspath(exe), "-H", "127.0.0.1", "-p", str(port)], root)
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/", proc, log, 60)
    return Server(url, proc, log, root)


# --- docker-registry (OCI) ------------------------------------------------------------------------

REGISTRY_CONF = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {root}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def registry_available() -> str | None:
    missing = [x for x in ("docker-registry", "skopeo") if shutil.which(x) is None]
    return f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)" if missing else None


def start_registry(root: Path) -> Server:
    port = free_port()
    conf = root / "registry.yml"
    conf.write_text(REGISTRY_CONF.format(root=root, port=port))
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    proc, log = _spawn([exe, "serve", os.fspath(conf)], root)
    url = f"http://127.0.0.1:{port}"
    _wait(url + "/v2/", proc, log, 30)
    return Server(url, proc, log, root)


# --- a counting relay ------------------------------------------------------------------------------

class Relay:
    """A TCP relay 127.0.0.1:PORT -> *upstream*, counting the connections and the bytes clients send.

    What a client sent is then known without trusting the client's own account of it: the
    benchmark's "bytes sent", and the tests' "this republish sent no request at all".
    splice(2) moves the bytes socket -> pipe -> socket, so they never enter Python.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split("/")[0].split(":")
        self.upstream = (host, int(port))
        self.sent = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            pair = [client, server]
            threading.Thread(target=self._pump, args=(client, server, True, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, pair: list[socket.socket]) -> None:
        r, w = os.pipe()
        try:
            while n := os.splice(src.fileno(), w, 1 << 20):
                left = n
                while left:
                    left -= os.splice(r, dst.fileno(), left)
                if up:
                    with self.lock:
                        self.sent += n
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # the other side sees the end; its pump ends in turn
            with self.lock:
                pair.remove(src)
                last = dst not in pair
            if last:  # both directions ended: the second pump closes both sockets
                src.close()
                dst.close()

    def take(self) -> tuple[int, int]:
        """(connections, bytes sent) since the last take."""
        with self.lock:
            counts = (self.connections, self.sent)
            self.connections = self.sent = 0
        return counts

    def stop(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()
