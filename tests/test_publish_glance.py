"""`imgsmith publish` to a real OpenStack Glance (33, from PyPI) on 127.0.0.1: sqlite, file store, no Keystone.

One server per module. Each test asserts what a user of the cloud sees: the image's
record (properties, formats, checksum) read back with openstacksdk, the bytes downloaded
back, the manifest's record, and that a republish sends nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from publishing import build, run, with_guest
from servers import Relay, Server, closed_port, glance_available, start_glance

pytestmark = pytest.mark.skipif(glance_available() is not None, reason=str(glance_available()))


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_glance(tmp_path_factory.mktemp("glance"))
    yield server
    server.stop()


def entry(url: str, **extra: str) -> str:
    more = "".join(f"\n    {k}: {v}" for k, v in extra.items())
    return f"""\
  - name: glance
    output: pubtest.qcow2
    to: glance
    endpoint: {url}
    image-name: "{{name}}-{{sha256:12}}"
    visibility: public
    tags: [imgsmith, test]
    properties: {{hw_vif_model: virtio, min_ram: 512}}{more}
"""


def images(server: Server) -> list[dict[str, Any]]:
    import openstack
    conn = openstack.connect(auth_type="none", image_endpoint_override=server.url)
    return list(conn.image.get("/images").json()["images"])


def test_create_properties_checksum_and_bytes_back(glance: Server, tmp_path: Path) -> None:
    import openstack
    out = build(tmp_path, entry(glance.url))
    with_guest(out)
    r = run("publish", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    rec = manifest["published"]["glance"]
    assert r.stdout.startswith(f"glance: published pubtest.qcow2 -> {rec['image_id']} (")
    conn = openstack.connect(auth_type="none", image_endpoint_override=glance.url)
    img = conn.image.get(f"/images/{rec['image_id']}").json()
    data = (out / "pubtest.qcow2").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    assert img["name"] == f"pubtest-{sha256[:12]}"
    assert (img["disk_format"], img["container_format"], img["visibility"]) == ("qcow2", "bare", "public")
    assert sorted(img["tags"]) == ["imgsmith", "test"]
    assert {k: img[k] for k in ("os_distro", "os_version", "architecture", "hw_firmware_type", "hw_disk_bus",
                                "hw_qemu_guest_agent", "os_type", "imgsmith_sha256", "hw_vif_model")} == {
        "os_distro": "debian", "os_version": "12", "architecture": "x86_64", "hw_firmware_type": "uefi",
        "hw_disk_bus": "virtio", "hw_qemu_guest_agent": "yes", "os_type": "linux", "imgsmith_sha256": sha256,
        "hw_vif_model": "virtio"}
    assert (img["min_disk"], img["min_ram"]) == (1, 512)
    assert img["os_hash_algo"] == "sha512"
    assert img["os_hash_value"] == hashlib.sha512(data).hexdigest() == rec["sha512"]
    assert rec["status"] == "active" and rec["sha256"] == sha256
    back = conn.image.get(f"/images/{rec['image_id']}/file").content
    assert back == data


def test_republish_sends_nothing(glance: Server, tmp_path: Path) -> None:
    out = build(tmp_path, entry(glance.url))
    assert run("publish", "out", cwd=tmp_path).returncode == 0
    before = images(glance)
    first = json.loads((out / "manifest.json").read_text())["published"]["glance"]
    r = run("publish", "out/manifest.json", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["destinations"][0]
    assert (doc["status"], doc["sent_bytes"], doc["record"]["image_id"]) == ("unchanged", 0, first["image_id"])
    assert images(glance) == before
    # Without the manifest's record (a fresh build dir), Glance is asked by imgsmith_sha256 and sha512.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["published"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = run("publish", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"glance: unchanged: pubtest.qcow2 is already there ({first['image_id']}); nothing sent\n"
    assert images(glance) == before


def test_the_record_is_proof_and_verify_asks(glance: Server, tmp_path: Path) -> None:
    """With the manifest's record a republish sends not one request (a relay in front of Glance counts them);
    --verify asks Glance; another image name is not taken for the recorded one (Glance is asked)."""
    relay = Relay(glance.url)
    try:
        out = build(tmp_path, entry(relay.url + "/"))
        assert run("publish", "out", cwd=tmp_path).returncode == 0
        assert relay.take()[1] > (out / "pubtest.qcow2").stat().st_size

        def publish(*args: str) -> dict[str, Any]:
            r = run("publish", "out", "--json", *args, cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)["destinations"][0]  # type: ignore[no-any-return]
        first = publish()
        assert (first["status"], first["found_by"], first["sent_bytes"]) == ("unchanged", "record", 0)
        assert relay.take() == (0, 0)
        doc = publish("--verify")
        assert (doc["status"], doc["found_by"], doc["record"]["image_id"]) == (
            "unchanged", "destination", first["record"]["image_id"])
        connections, sent = relay.take()
        assert connections >= 1 and 0 < sent < 10_000
        image = tmp_path / "image.yaml"
        image.write_text(image.read_text().replace('image-name: "{name}-{sha256:12}"', 'image-name: "renamed"'))
        doc = publish()
        assert doc["found_by"] == "destination" and relay.take()[0] >= 1
    finally:
        relay.stop()


def test_dry_run_prints_every_request_and_sends_nothing(glance: Server, tmp_path: Path) -> None:
    build(tmp_path, entry(glance.url))
    before = images(glance)
    r = run("publish", "out", "--dry-run", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    actions = json.loads(r.stdout)["destinations"][0]["actions"]
    assert [a["api"] for a in actions] == ["GET /v2/images", "POST /v2/images", "PUT /v2/images/{id}/file",
                                           "GET /v2/images/{id}"]
    body = actions[1]["params"]
    assert body["disk_format"] == "qcow2" and body["hw_firmware_type"] == "uefi" and body["min_ram"] == 512
    assert images(glance) == before


def test_unreachable_endpoint_and_missing_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    build(tmp_path, entry(f"http://127.0.0.1:{port}/"))
    r = run("publish", "out", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("imgsmith: error: glance: glance: ") and f"127.0.0.1:{port}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "image.yaml").write_text((tmp_path / "image.yaml").read_text().replace(
        f"    endpoint: http://127.0.0.1:{port}/\n", ""))
    env = {"OS_CLOUD": "", "OS_AUTH_URL": ""}
    r = run("publish", "out", cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert r.stderr == ("imgsmith: error: glance: no OpenStack credentials: give cloud: (a clouds.yaml entry), or "
                        "set OS_CLOUD or OS_AUTH_URL and the other OS_* variables\n")
