"""Matrices and farms: ``matrix:`` variants, `imgsmith build A B --jobs N`, `imgsmith plan` in three forms.

The unit cases start no guest (planning fetches and builds nothing); the one guest case
builds a two-variant matrix with the chroot backend (root) and reads the outputs back.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from guests import guest_image, read_files
from imgsmith.definition import load_definition, load_variants
from imgsmith.errors import DefinitionError

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]

MATRIX = """\
version: 1
name: web
matrix:
  cloud: [openstack, aliyun]
  mem: [512, 1024]
source: {file: base.qcow2}
layers:
  - name: common
    steps:
      - write: /etc/common:shared
  - name: per-cloud
    memsize: ${matrix.mem}
    steps:
      - hostname: web-${matrix.cloud}
outputs:
  - preset: ${matrix.cloud}
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IMGSMITH_CACHE": str(cwd / "cache"), "IMGSMITH_RUN_DIR": str(cwd / "run")}
    env.pop("IMGSMITH_CACHE_REMOTE", None)
    return subprocess.run([*IMGSMITH, *args], capture_output=True, text=True, cwd=cwd, env=env, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "base.qcow2").write_bytes(b"not really an image, but planning only hashes it")
    (tmp_path / "web.yaml").write_text(MATRIX)
    return tmp_path


def test_a_matrix_gives_one_variant_per_combination_with_the_values_substituted(project: Path) -> None:
    variants = load_variants(project / "web.yaml")
    assert [v.definition.name for v in variants] == ["web-openstack-512", "web-openstack-1024",
                                                     "web-aliyun-512", "web-aliyun-1024"]
    v = variants[2]
    assert v.matrix == {"cloud": "aliyun", "mem": 512}
    assert v.definition.layers[1].memsize == 512  # a whole-value reference keeps the value's type
    assert v.definition.layers[1].steps == [{"hostname": "web-aliyun"}]
    assert [o.name for o in v.outputs] == ["web-aliyun-512-aliyun.qcow2"]
    assert v.overrides == ['matrix.cloud=["aliyun"]', "matrix.mem=[512]"]
    assert len({x.text_hash for x in variants}) == 4
    # The --set items of a variant narrow the matrix to it: what a CI job runs.
    again = load_definition(project / "web.yaml", overrides=v.overrides)
    assert again.definition == v.definition and again.text_hash == v.text_hash


def test_a_definition_without_a_matrix_loads_as_before(project: Path) -> None:
    (project / "plain.yaml").write_text("version: 1\nname: plain\nsource: {file: base.qcow2}\n")
    loaded = load_definition(project / "plain.yaml")
    assert loaded.definition.name == "plain" and loaded.matrix == {} and loaded.overrides == []
    assert [v.definition for v in load_variants(project / "plain.yaml")] == [loaded.definition]


def test_the_name_may_place_the_values_itself(project: Path) -> None:
    (project / "n.yaml").write_text("version: 1\nname: ${matrix.cloud}-web\nmatrix: {cloud: [gcp, azure]}\n"
                                    "source: {file: base.qcow2}\n")
    assert [v.definition.name for v in load_variants(project / "n.yaml")] == ["gcp-web", "azure-web"]


def test_an_unknown_axis_is_refused_at_load_where_it_is_written(project: Path) -> None:
    (project / "web.yaml").write_text(MATRIX.replace("web-${matrix.cloud}", "web-${matrix.clodu}"))
    r = run("build", "web.yaml", "--dry-run", cwd=project)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "imgsmith: error: web.yaml:14:19: layers[1].steps[0].hostname: unknown matrix axis 'clodu' in "
        "'${matrix.clodu}' (axes: cloud, mem)"]
    (project / "plain.yaml").write_text("version: 1\nname: p\nsource: {file: base.qcow2}\nsize: ${matrix.size}\n")
    with pytest.raises(DefinitionError) as exc:
        load_definition(project / "plain.yaml")
    assert str(exc.value) == (f"{project}/plain.yaml:4:7: size: unknown matrix axis 'size' in '${{matrix.size}}' "
                              "(axes: none: the definition has no matrix:)")


def test_matrix_section_problems_have_positions(project: Path) -> None:
    (project / "m.yaml").write_text("version: 1\nname: m\nmatrix:\n  cloud: []\n  Bad-Axis: [a]\n  v: [a, 'x y', a]\n"
                                    "source: {file: base.qcow2}\n")
    with pytest.raises(DefinitionError) as exc:
        load_variants(project / "m.yaml")
    f = f"{project}/m.yaml"
    assert str(exc.value).splitlines() == [
        f"{f}:4:10: matrix.cloud: an axis is a non-empty list of values",
        f"{f}:5:3: matrix.Bad-Axis: axis name 'Bad-Axis': a letter, then letters, digits or _",
        f"{f}:6:6: matrix.v: an axis lists each value once",
        f"{f}:6:10: matrix.v[1]: axis value 'x y': letters, digits, '.', '_' or '-' (it becomes part of the "
        "variant's name)"]


def test_a_problem_in_one_variant_names_it_and_a_common_one_is_reported_once(project: Path) -> None:
    text = MATRIX.replace("      - write: /etc/common:shared", "      - write: /etc/common:shared\n      - chmod: 0644")
    (project / "web.yaml").write_text(text.replace("mem: [512, 1024]", "mem: [512, 100]"))
    with pytest.raises(DefinitionError) as exc:
        load_variants(project / "web.yaml")
    f = f"{project}/web.yaml"
    assert str(exc.value).splitlines() == [
        f"{f}:11:16: layers[0].steps[1].chmod: expected PERMISSIONS:FILE, got '420'",  # once, not four times
        f"{f}:13:14: layers[1].memsize: variant web-aliyun-100: Input should be greater than or equal to 256",
        f"{f}:13:14: layers[1].memsize: variant web-openstack-100: Input should be greater than or equal to 256"]


def test_a_matrix_of_several_variants_is_refused_where_one_image_is_meant(project: Path) -> None:
    with pytest.raises(DefinitionError) as exc:
        load_definition(project / "web.yaml")
    assert str(exc.value) == (f"{project}/web.yaml:3:1: matrix: the matrix gives 4 variants (web-openstack-512, "
                              "web-openstack-1024, web-aliyun-512, web-aliyun-1024): choose one with "
                              "--set matrix.AXIS=[VALUE]")


def test_two_builds_with_one_name_are_refused(project: Path) -> None:
    (project / "other.yaml").write_text("version: 1\nname: web-aliyun-512\nsource: {file: base.qcow2}\n")
    r = run("plan", "web.yaml", "other.yaml", cwd=project)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "imgsmith: error: other.yaml and web.yaml both give a build named 'web-aliyun-512' (their outputs "
        "would share a directory): rename one"]


def test_build_of_several_definitions_gives_each_its_own_directory_and_a_json_list(project: Path) -> None:
    (project / "other.yaml").write_text("version: 1\nname: other\nsource: {file: base.qcow2}\n")
    r = run("build", "web.yaml", "other.yaml", "-o", "out", "--dry-run", "--json", "--jobs", "2", cwd=project)
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)
    assert [(d["name"], d["output_dir"], d["dry_run"]) for d in docs] == [
        ("web-openstack-512", "out/web-openstack-512", True), ("web-openstack-1024", "out/web-openstack-1024", True),
        ("web-aliyun-512", "out/web-aliyun-512", True), ("web-aliyun-1024", "out/web-aliyun-1024", True),
        ("other", "out/other", True)]
    text = run("build", "web.yaml", "other.yaml", "-o", "out", "--dry-run", cwd=project)
    assert text.stdout.splitlines()[-1].startswith("5 of 5 build(s) planned (")
    assert "  into: out/other" in text.stdout.splitlines()
    single = run("build", "other.yaml", "-o", "out", "--dry-run", "--json", cwd=project)
    assert json.loads(single.stdout)["output_dir"] == "out"  # one build: one document, -o as given
    bad = run("build", "web.yaml", "--jobs", "0", "--dry-run", cwd=project)
    assert (bad.returncode, bad.stderr) == (2, "imgsmith: error: --jobs 0: give at least 1\n")


def test_plan_json_lists_one_job_per_variant_with_its_keys(project: Path) -> None:
    r = run("plan", "web.yaml", "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    jobs = json.loads(r.stdout)
    assert [j["name"] for j in jobs] == ["web-openstack-512", "web-openstack-1024", "web-aliyun-512",
                                         "web-aliyun-1024"]
    assert {j["keys"][0] for j in jobs} == {jobs[0]["keys"][0]}  # the common layer: one key for all
    # memsize is how the layer is run, not what it makes: the two mem variants of a cloud share the key.
    assert [j["keys"][1] for j in jobs][::2] == [j["keys"][1] for j in jobs][1::2]
    assert len({j["keys"][1] for j in jobs}) == 2
    assert all(j["definition"] == "web.yaml" and len(j["keys"]) == 2 for j in jobs)
    # The keys are the build's own: the dry run of that one job gives the same.
    j = jobs[3]
    sets = [a for item in j["set"] for a in ("--set", item)]
    dry = run("build", "web.yaml", *sets, "--dry-run", "--json", cwd=project)
    assert dry.returncode == 0, dry.stderr
    built = json.loads(dry.stdout)
    assert built["name"] == "web-aliyun-1024"
    assert [x["key"] for x in built["layers"]] == j["keys"]


def test_plan_github_matrix(project: Path) -> None:
    r = run("plan", "web.yaml", "--format", "github-matrix", cwd=project)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1  # one line: echo "matrix=$(imgsmith plan ...)" >> $GITHUB_OUTPUT
    include = json.loads(r.stdout)["include"]
    assert [set(x) for x in include] == [{"name", "definition", "set", "keys", "args"}] * 4
    assert include[0]["set"] == ['matrix.cloud=["openstack"]', "matrix.mem=[512]"]
    assert shlex.split(include[0]["args"]) == ["--set", 'matrix.cloud=["openstack"]', "--set", "matrix.mem=[512]"]


def test_plan_k8s_jobs_are_privileged_with_devices_and_the_remote_from_a_secret(project: Path) -> None:
    r = run("plan", "web.yaml", "--format", "k8s-jobs", "--image", "reg.local/imgsmith:1", "--namespace", "ci",
            "--cache-secret", "farm-cache", cwd=project)
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["metadata"]["name"] for d in docs] == ["imgsmith-web-openstack-512", "imgsmith-web-openstack-1024",
                                                      "imgsmith-web-aliyun-512", "imgsmith-web-aliyun-1024"]
    job = docs[2]
    assert (job["apiVersion"], job["kind"], job["metadata"]["namespace"]) == ("batch/v1", "Job", "ci")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["image"] == "reg.local/imgsmith:1" and c["securityContext"] == {"privileged": True}
    assert c["command"] == ["imgsmith"]
    assert c["args"] == ["build", "web.yaml", "-o", "/out", "--set", 'matrix.cloud=["aliyun"]', "--set",
                         "matrix.mem=[512]"]
    env = {e["name"]: e for e in c["env"]}
    assert env["IMGSMITH_CACHE_REMOTE"]["valueFrom"] == {"secretKeyRef": {"name": "farm-cache", "key": "remote"}}
    host = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"kvm": {"path": "/dev/kvm", "type": "CharDevice"},
                    "fuse": {"path": "/dev/fuse", "type": "CharDevice"}}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/dev/kvm", "/dev/fuse", "/out"} <= mounts
    assert json.loads(job["metadata"]["annotations"]["imgsmith/keys"]) == json.loads(
        run("plan", "web.yaml", "--json", cwd=project).stdout)[2]["keys"]
    nokvm = run("plan", "web.yaml", "--format", "k8s-jobs", "--no-kvm", cwd=project)
    pod = next(yaml.safe_load_all(nokvm.stdout))["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"] if "hostPath" in v] == ["fuse"]


def test_plan_of_ten_definitions_by_three_clouds_is_stable(tmp_path: Path) -> None:
    """Ten definitions by three clouds plan to 30 jobs, the same on every run (the base is hashed once,
    then memoized). How long it takes is bench/farm's figure, not a test's: a shared CI host makes
    any wall-time bound here either loose or flaky."""
    (tmp_path / "base.qcow2").write_bytes(os.urandom(64 << 20))
    (tmp_path / "files").mkdir()
    for i in range(20):
        (tmp_path / "files" / f"f{i}").write_bytes(os.urandom(256 << 10))
    for i in range(10):
        (tmp_path / f"d{i}.yaml").write_text(
            f"version: 1\nname: img{i}\nmatrix: {{cloud: [openstack, aliyun, tencent]}}\n"
            "source: {file: base.qcow2}\nlayers:\n  - name: files\n    steps:\n      - copy-in: files:/opt\n"
            f"  - name: cloud\n    steps:\n      - write: /etc/which:{i}-${{matrix.cloud}}\n"
            "outputs:\n  - preset: ${matrix.cloud}\n")
    files = [f"d{i}.yaml" for i in range(10)]
    first = run("plan", *files, "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run("plan", *files, "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    jobs = json.loads(again.stdout)
    assert sorted(j["name"] for j in jobs) == sorted(f"img{i}-{c}" for i in range(10)
                                                     for c in ("openstack", "aliyun", "tencent"))
    assert len({j["keys"][0] for j in jobs}) == 1  # same base, same files: one layer for all 30 jobs
    assert len({j["keys"][1] for j in jobs}) == 30


@pytest.mark.guest
@pytest.mark.skipif(os.geteuid() != 0, reason="the chroot backend needs root")
def test_a_two_variant_matrix_builds_in_one_run_sharing_its_first_layer(tmp_path: Path) -> None:
    import shutil
    shutil.copy(guest_image("debian12"), tmp_path / "base.qcow2")
    (tmp_path / "m.yaml").write_text(
        "version: 1\nname: web\nbackend: chroot\nmatrix: {cloud: [openstack, aliyun]}\n"
        "source: {file: base.qcow2}\nlayers:\n  - name: common\n    steps:\n      - write: /etc/common:shared\n"
        "  - name: per-cloud\n    steps:\n      - write: /etc/cloud-name:${matrix.cloud}\n"
        "outputs:\n  - format: qcow2\n    name: disk.qcow2\n")
    r = run("build", "m.yaml", "-o", "out", "--jobs", "2", "--trust-image", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [x["name"] for x in results] == ["web-openstack", "web-aliyun"]
    assert [x["output_dir"] for x in results] == ["out/web-openstack", "out/web-aliyun"]
    # The common layer: one key, built by one of the two and found cached by the other.
    assert results[0]["layers"][0]["key"] == results[1]["layers"][0]["key"]
    assert sorted(x["sessions"] for x in results) == [1, 2]
    assert len(list((tmp_path / "cache" / "layers").rglob("meta.json"))) == 3
    for cloud in ("openstack", "aliyun"):
        got = read_files(tmp_path / "out" / f"web-{cloud}" / "disk.qcow2", ["/etc/common", "/etc/cloud-name"])
        assert got == {"/etc/common": b"shared", "/etc/cloud-name": cloud.encode()}
    # Again: everything is cached, and the single-definition output stays one document.
    again = run("build", "m.yaml", "-o", "out", "--jobs", "2", "--trust-image", "--json", cwd=tmp_path)
    assert [x["nothing_to_do"] for x in json.loads(again.stdout)] == [True, True]
    one = run("build", "m.yaml", "--set", 'matrix.cloud=["aliyun"]', "-o", "one", "--trust-image", "--json",
              cwd=tmp_path)
    doc = json.loads(one.stdout)
    assert doc["name"] == "web-aliyun" and doc["sessions"] == 0 and doc["output_dir"] == "one"


@pytest.mark.guest
@pytest.mark.skipif(os.geteuid() != 0, reason="the chroot backend needs root")
def test_a_failed_variant_does_not_stop_the_others(tmp_path: Path) -> None:
    import shutil
    shutil.copy(guest_image("debian12"), tmp_path / "base.qcow2")
    (tmp_path / "m.yaml").write_text(
        "version: 1\nname: t\nbackend: chroot\nmatrix: {cmd: ['true', 'false']}\nsource: {file: base.qcow2}\n"
        "layers:\n  - name: a\n    steps:\n      - run-command: ${matrix.cmd}\n"
        "outputs:\n  - format: qcow2\n    name: disk.qcow2\n")
    r = run("build", "m.yaml", "-o", "out", "--jobs", "2", "--trust-image", "--json", cwd=tmp_path)
    assert r.returncode == 1
    ok, failed = json.loads(r.stdout)
    assert ok["name"] == "t-true" and (tmp_path / "out" / "t-true" / "disk.qcow2").is_file()
    assert failed["name"] == "t-false" and failed["error"]["kind"] and "false" in failed["error"]["message"]
    assert not (tmp_path / "out" / "t-false").exists()
    plain = run("build", "m.yaml", "-o", "out2", "--trust-image", cwd=tmp_path)
    assert plain.returncode == 1
    errors = [x for x in plain.stderr.splitlines() if x.startswith("imgsmith: error: ")]
    assert len(errors) == 1 and errors[0].startswith("imgsmith: error: t-false: "), errors
    assert plain.stdout.splitlines()[-1].startswith("1 of 2 build(s) succeeded (")
