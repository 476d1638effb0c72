"""Unit tests for the emulated cloud datasources: the config drive read back with pycdlib, the metadata
server run as qemu runs it (a request on stdin, the response on stdout), qemu's command line, the verdict."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from imgsmith.boot import mdserver
from imgsmith.boot.configdrive import ConfigDrive, write_config_drive
from imgsmith.boot.datasource import DATASOURCES, Platform, datasource_for
from imgsmith.boot.qemu import GUEST_MAC, qemu_argv
from imgsmith.boot.seed import SeedConfig, user_data
from imgsmith.boot.ssh import ThrowawayKey
from imgsmith.boot.test import machine_config
from imgsmith.boot.verdict import judge, login_user, request_summary
from imgsmith.cli import test as cli_test
from imgsmith.errors import UsageError
from imgsmith.host.accel import Accelerator

# --- config drive --------------------------------------------------------------------------------


def _iso_text(iso: pycdlib.PyCdlib, path: str) -> str:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, joliet_path=path)
    return out.getvalue().decode()


def test_config_drive_reads_back_with_nova_layout(tmp_path: Path) -> None:
    cfg = SeedConfig(instance_id="6f1a4a5e-0000-4000-8000-000000000001", public_key="ssh-ed25519 AAAAuser u",
                     hostname="imgsmith-openstack", instance_key="ssh-ed25519 AAAAinstance i")
    drive = ConfigDrive(uuid=cfg.instance_id, hostname=cfg.hostname, public_key="ssh-ed25519 AAAAinstance i",
                        user_data=user_data(cfg), mac=GUEST_MAC)
    path = write_config_drive(tmp_path / "cd.iso", drive)
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "config-2"
        for version in ("latest", "2018-08-27"):
            meta = json.loads(_iso_text(iso, f"/openstack/{version}/meta_data.json"))
            assert meta["uuid"] == cfg.instance_id
            assert meta["hostname"] == meta["name"] == "imgsmith-openstack"
            assert meta["public_keys"] == {"imgsmith": "ssh-ed25519 AAAAinstance i"}
            assert meta["availability_zone"] == "nova"
            net = json.loads(_iso_text(iso, f"/openstack/{version}/network_data.json"))
            assert net["links"][0]["ethernet_mac_address"] == GUEST_MAC
            assert net["networks"][0]["type"] == "ipv4_dhcp"
            ud = _iso_text(iso, f"/openstack/{version}/user_data")
            assert ud.startswith("#cloud-config\n")
            assert yaml.safe_load(ud)["final_message"].startswith(f"IMGSMITH-BOOT-OK {cfg.instance_id} ")
        rr = io.BytesIO()
        iso.get_file_from_iso_fp(rr, rr_path="/openstack/latest/meta_data.json")  # Rock Ridge names too
        assert json.loads(rr.getvalue())["uuid"] == cfg.instance_id
    finally:
        iso.close()


# --- metadata server ------------------------------------------------------------------------------


def _serve(data_file: Path, request: bytes) -> tuple[int, dict[str, str], str]:
    """Run the server exactly as qemu's guestfwd does: one process, the connection on stdin/stdout."""
    r = subprocess.run([sys.executable, "-I", mdserver.__file__, str(data_file)], input=request,
                       capture_output=True, check=True, timeout=30)
    head, _sep, body = r.stdout.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _s, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def _prepared(cloud: str, tmp: Path) -> tuple[SeedConfig, Platform, dict[str, Any]]:
    ds = DATASOURCES[cloud]
    cfg = ds.seed_config("ssh-ed25519 AAAAuser u", "ssh-ed25519 AAAAinstance i")
    platform = ds.prepare(cfg, tmp)
    data_file = tmp / f"{ {'aws': 'ec2', 'gcp': 'gce'}.get(cloud, cloud)}-metadata.json"
    data = json.loads(data_file.read_text()) if ds.metadata_service else {}
    return cfg, platform, data


def test_imds_v2_requires_the_token(tmp_path: Path) -> None:
    cfg, platform, data = _prepared("aws", tmp_path)
    data_file = tmp_path / "ec2-metadata.json"
    status, _h, _b = _serve(data_file, b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
    assert status == 401
    status, _h, body = _serve(data_file, b"PUT /latest/api/token HTTP/1.1\r\n\r\n")
    assert status == 400 and "ttl-seconds" in body
    put = (b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
           b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n")
    status, headers, token = _serve(data_file, put)
    assert status == 200 and token == data["token"]["value"] and headers["connection"] == "close"

    def get(path: str, tok: str) -> tuple[int, str]:
        req = f"GET {path} HTTP/1.1\r\nX-aws-ec2-metadata-token: {tok}\r\n\r\n".encode()
        code, _h, text = _serve(data_file, req)
        return code, text

    assert get("/2021-03-23/meta-data/instance-id", token) == (200, cfg.instance_id)
    assert get("/2021-03-23/meta-data/instance-id", "wrong") == (401, "")
    assert get("/latest/meta-data/public-keys/", token) == (200, "0=imgsmith")
    assert get("/latest/meta-data/public-keys/0/openssh-key", token) == (200, "ssh-ed25519 AAAAinstance i")
    assert get("/latest/meta-data/local-hostname", token) == (200, "imgsmith-aws.ec2.internal")
    assert get("/latest/user-data", token)[1] == user_data(cfg)
    code, doc = get("/latest/dynamic/instance-identity/document", token)
    assert code == 200 and json.loads(doc)["instanceId"] == cfg.instance_id
    assert get(f"/latest/meta-data/network/interfaces/macs/{GUEST_MAC}/device-number", token) == (200, "0")
    assert get("/latest/meta-data/nothing-here", token) == (404, "")
    assert "block-device-mapping/" in get("/latest/meta-data", token)[1].splitlines()

    summary = request_summary(platform.request_log)
    assert summary is not None
    assert summary["token_puts"] == 1 and summary["answered_without_token"] == 0
    assert summary["by_method_status"] == {"GET 200": 8, "GET 401": 2, "GET 404": 1, "PUT 200": 1, "PUT 400": 1}


def test_aliyun_metadata_needs_no_token_and_has_its_api_version(tmp_path: Path) -> None:
    cfg, platform, _data = _prepared("aliyun", tmp_path)
    data_file = tmp_path / "aliyun-metadata.json"
    for path, expected in (("/2016-01-01/meta-data/instance-id", cfg.instance_id),
                           ("/2016-01-01/meta-data/hostname", "imgsmith-aliyun"),
                           ("/2016-01-01/meta-data/public-keys/", "0/"),
                           ("/2016-01-01/meta-data/public-keys/0/openssh-key", "ssh-ed25519 AAAAinstance i")):
        assert _serve(data_file, f"GET {path} HTTP/1.1\r\n\r\n".encode())[::2] == (200, expected)
    assert platform.network.net == "100.100.100.0/24"
    assert [(g.address, g.port) for g in platform.network.guestfwd] == [("100.100.100.200", 80)]
    assert any("product=Alibaba Cloud ECS" in s for s in platform.smbios)


def test_metadata_server_answers_garbage_with_400(tmp_path: Path) -> None:
    _prepared("aliyun", tmp_path)
    assert _serve(tmp_path / "aliyun-metadata.json", b"\x16\x03\x01garbage\r\n\r\n")[0] == 400


def test_gce_metadata_needs_its_flavor_header_and_answers_recursive_documents(tmp_path: Path) -> None:
    """What cloud-init 22.4's GCE datasource reads, as the GCE metadata server answers it."""
    cfg, platform, data = _prepared("gcp", tmp_path)
    data_file = tmp_path / "gce-metadata.json"
    v1 = "/computeMetadata/v1"

    def get(path: str, flavor: bool = True) -> tuple[int, str]:
        head = "Metadata-Flavor: Google\r\n" if flavor else ""
        code, _h, text = _serve(data_file, f"GET {path} HTTP/1.1\r\nHost: metadata.google.internal\r\n{head}\r\n"
                                .encode())
        return code, text

    assert get(f"{v1}/instance/id", flavor=False)[0] == 403
    assert get(f"{v1}/instance/id") == (200, cfg.instance_id) and cfg.instance_id.isdigit()
    assert get(f"{v1}/instance/zone") == (200, "projects/123456789012/zones/us-central1-a")
    assert get(f"{v1}/instance/hostname") == (200, "imgsmith-gcp.us-central1-a.c.imgsmith-boot-test.internal")
    code, doc = get(f"{v1}/instance/attributes/?recursive=True")  # cloud-init's spelling
    assert code == 200 and json.loads(doc) == {"ssh-keys": "cloudinit:ssh-ed25519 AAAAinstance i",
                                               "user-data": user_data(cfg)}
    assert get(f"{v1}/project/attributes/?recursive=true") == (200, "{}")
    assert sorted(get(f"{v1}/instance/attributes/")[1].splitlines()) == ["ssh-keys", "user-data"]  # a listing
    assert "attributes/" in get(f"{v1}/instance/")[1].splitlines()
    assert data["require_header"] == ["Metadata-Flavor", "Google"]
    assert [(g.address, g.port) for g in platform.network.guestfwd] == [("169.254.169.254", 80)]
    assert any("product=Google Compute Engine,version=,serial=GoogleCloud-" in s for s in platform.smbios)
    assert DATASOURCES["gcp"].resolver == (("169.254.169.254", "metadata.google.internal"),)
    summary = request_summary(platform.request_log)
    assert summary is not None and summary["by_method_status"] == {"GET 200": 7, "GET 403": 1}


# --- qemu command line per datasource --------------------------------------------------------------


def _argv(cloud: str, tmp: Path) -> list[str]:
    _cfg, platform, _data = _prepared(cloud, tmp)
    cfg = machine_config(tmp / "o,verlay.qcow2", platform.drive, tmp, Accelerator("tcg", "test"), 40022,
                         network=platform.network, smbios=platform.smbios)
    return qemu_argv(cfg)


def test_aws_machine_has_ec2_smbios_guestfwd_and_no_seed(tmp_path: Path) -> None:
    argv = _argv("aws", tmp_path)
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.startswith("user,id=net0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,"
                             "dhcpstart=169.254.0.15,hostfwd=tcp:127.0.0.1:40022-:22,"
                             "guestfwd=tcp:169.254.169.254:80-cmd:")
    assert netdev.endswith(f"mdserver.py {tmp_path}/ec2-metadata.json")
    assert [a for a in argv if a.startswith("file=")] == [f"file={tmp_path}/o,,verlay.qcow2,format=qcow2,"
                                                          "if=virtio,cache=unsafe,discard=unmap"]
    smbios = [argv[i + 1] for i, a in enumerate(argv) if a == "-smbios"]
    assert smbios[0].startswith("type=1,manufacturer=Amazon EC2,")
    fields = dict(f.split("=", 1) for f in smbios[0].split(","))
    assert fields["uuid"].startswith("ec2") and fields["serial"] == fields["uuid"]  # cloud-init's identify_aws
    assert f"mac={GUEST_MAC}" in argv[argv.index("-netdev") + 3]


def test_config_drive_clouds_attach_the_drive_read_only(tmp_path: Path) -> None:
    for cloud, vendor in (("openstack", "OpenStack Foundation"), ("tencent", "Tencent Cloud")):
        sub = tmp_path / cloud
        sub.mkdir()
        argv = _argv(cloud, sub)
        drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
        assert drives[1] == f"file={sub}/config-drive.iso,format=raw,if=virtio,readonly=on"
        assert argv[argv.index("-smbios") + 1].startswith(f"type=1,manufacturer={vendor},")
        assert "guestfwd" not in argv[argv.index("-netdev") + 1]


def test_unknown_and_unemulated_clouds_are_usage_errors() -> None:
    assert datasource_for(None).cloud == "nocloud"
    assert datasource_for("GCE").cloud == "gcp"  # the datasource's own name for the cloud
    with pytest.raises(UsageError, match="no azure datasource emulation"):
        datasource_for("azure")
    with pytest.raises(UsageError, match="unknown cloud 'mars'") as info:
        datasource_for("mars")
    assert info.value.hint == "available: nocloud, openstack, tencent, aws, aliyun, gcp"
    assert tuple(DATASOURCES) == cli_test._CLOUDS


# --- verdict -------------------------------------------------------------------------------------


def _report(cfg: SeedConfig, **over: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cloud_id": "aws", "datasource": "DataSourceEc2Local", "errors": [], "hostname": cfg.hostname,
        "ds_identify": "datasource_list: [ Ec2, None ]", "user_data_proof": cfg.instance_id,
        "key_holders": [{"user": "root", "restricted": True}, {"user": "debian", "restricted": False}],
        "instance": {"instance_id": cfg.instance_id}, "dmi": {"sys_vendor": "Amazon EC2"}}
    return {**report, **over}


def test_verdict_passes_only_when_everything_took_effect(tmp_path: Path) -> None:
    ds = DATASOURCES["aws"]
    key = ThrowawayKey.generate()
    cfg = ds.seed_config(key.public, key.public)
    requests = {"requests": 30, "token_puts": 1, "answered_without_token": 0, "by_method_status": {}}
    report = _report(cfg)
    assert login_user(report) == "debian"
    good = judge(ds, cfg, report, key_login="debian", requests=requests)
    assert good.passed and good.datasource == "Ec2Local" and good.ds_identify == "Ec2"
    bad = judge(ds, cfg, _report(cfg, datasource="DataSourceNoCloud [seed=/dev/vdb]", cloud_id="nocloud",
                                 hostname="localhost", user_data_proof=None, key_holders=[]),
                key_login=None, requests={**requests, "requests": 0, "token_puts": 0})
    assert not bad.passed
    assert bad.findings == (
        "cloud-init used DataSourceNoCloud [seed=/dev/vdb], not Ec2Local or Ec2",
        "cloud-id says 'nocloud', expected 'aws'",
        f"hostname is 'localhost', the datasource said '{cfg.hostname}'",
        f"user-data's runcmd did not write {cfg.instance_id} to /var/lib/imgsmith-boot/user-data",
        "no login with the datasource's SSH key (no account's authorized_keys holds it)",
        "the guest never asked the metadata service at 169.254.169.254:80",
        "no IMDSv2 token was requested (PUT /latest/api/token)",
    )


def test_cli_offers_the_clouds_and_refuses_others(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "imgsmith.cli.main", "test", str(tmp_path / "x.qcow2"),
                        "--cloud", "azure"], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "argument --cloud: invalid choice: 'azure'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "imgsmith.cli.main", "test", "--help"], capture_output=True,
                       text=True, check=True)
    assert "--cloud CLOUD" in r.stdout and "nocloud, openstack, tencent, aws, aliyun, gcp" in " ".join(r.stdout.split())
