"""`imgsmith plan FILES...`: the jobs of a farm — one per variant, with the layer keys each needs.

Computing keys fetches nothing and starts no guest (pipeline.plan): it hashes the host
files the steps read, and a local ``file:`` source is hashed once and then remembered by
(inode, size, mtime), so planning dozens of variants is quick. The jobs come out as a
list (``--json``), as a GitHub Actions ``strategy.matrix`` (``--format github-matrix``), or
as Kubernetes Job manifests (``--format k8s-jobs``); each job runs ``imgsmith build`` on
one definition with the ``--set`` items that narrow its matrix to one variant, and the
remote layer cache is the only state the jobs share (docs/farm.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .commands import SUMMARIES
from .render import print_json

if TYPE_CHECKING:
    from ..definition import LoadedDefinition

EPILOG = """\
Each job's "set" list holds the --set items that select its variant (the run's own --set
items first): `imgsmith build DEFINITION --set ITEM...` builds exactly that job.

examples:
  imgsmith plan images/*.yaml --json
  imgsmith plan images/*.yaml --format github-matrix     # for strategy.matrix: fromJSON(...)
  imgsmith plan images/*.yaml --format k8s-jobs --image registry.local/imgsmith:1 | kubectl apply -f -
"""

FORMATS = ("jobs", "github-matrix", "k8s-jobs")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help=SUMMARIES["plan"],
                       description="Plan the builds of one or more definitions: one job per matrix variant, with "
                                   "the layer keys each needs. Nothing is fetched or built.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("definitions", type=Path, nargs="+", metavar="FILE.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a definition value in every job (as for build)")
    p.add_argument("--format", choices=FORMATS, default="jobs",
                   help="jobs (a list; text unless --json), github-matrix (JSON {include: [...]}) or k8s-jobs "
                        "(YAML Job manifests)")
    p.add_argument("--json", action="store_true", help="the jobs as JSON (the form of --format jobs)")
    k = p.add_argument_group("k8s-jobs")
    k.add_argument("--image", default="imgsmith:latest", metavar="IMAGE",
                   help="the container image: imgsmith and the definitions with their files (default %(default)s)")
    k.add_argument("--workdir", default="/workspace", metavar="DIR",
                   help="where the definitions are in that image (paths are as given here; default %(default)s)")
    k.add_argument("--namespace", default=None, metavar="NS", help="the Jobs' namespace")
    k.add_argument("--cache-secret", default="imgsmith-cache", metavar="NAME",
                   help="the Secret with key 'remote' (IMGSMITH_CACHE_REMOTE) and optional 'config.toml' and "
                        "signing key files (default %(default)s)")
    k.add_argument("--no-kvm", dest="kvm", action="store_false", default=True,
                   help="do not ask for /dev/kvm (nodes without it; builds run under TCG)")
    k.add_argument("--publish", action="store_true", help="the jobs publish their outputs (build --publish)")
    p.set_defaults(func=run)


def plan_jobs(files: list[Path], overrides: list[str]) -> list[dict[str, Any]]:
    """One job per variant: its name, definition, the --set items choosing it, base and layer keys."""
    from ..farm import load_all
    from ..pipeline import BuildOptions, plan
    options = BuildOptions(dry_run=True)  # no remote: planning contacts nothing
    jobs = []
    for loaded in load_all(files, overrides):
        p = plan(loaded, options)
        jobs.append(_job(loaded, p.base_key, [(x.name, x.key, x.cached) for x in p.layers]))
    return jobs


def _job(loaded: LoadedDefinition, base: str, layers: list[tuple[str, str, bool]]) -> dict[str, Any]:
    return {"name": loaded.definition.name, "definition": os.fspath(loaded.path), "set": list(loaded.overrides),
            "matrix": dict(loaded.matrix), "base": base, "keys": [key for _, key, _ in layers],
            "layers": [{"name": n, "key": key, "cached": cached} for n, key, cached in layers],
            "outputs": [o.name for o in loaded.outputs]}


def build_argv(job: dict[str, Any], *, output_dir: str, publish: bool = False) -> list[str]:
    """The `imgsmith build` arguments that run *job* (what a CI step or a pod executes)."""
    argv = ["build", job["definition"], "-o", output_dir]
    for item in job["set"]:
        argv += ["--set", item]
    return [*argv, "--publish"] if publish else argv


def github_matrix(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """``strategy.matrix`` for GitHub Actions: ``args`` is the shell-quoted --set list of the job."""
    return {"include": [{"name": j["name"], "definition": j["definition"], "set": j["set"], "keys": j["keys"],
                         "args": shlex.join(a for item in j["set"] for a in ("--set", item))} for j in jobs]}


def _dns_name(name: str) -> str:
    """A Kubernetes object name (RFC 1123 label): lowercase, [a-z0-9-], at most 63 characters."""
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    label = f"imgsmith-{clean}"
    if len(label) <= 63 and clean == name:
        return label
    return f"{label[:54].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def k8s_job(job: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A batch/v1 Job: privileged (loop devices, mounts), /dev/kvm and /dev/fuse from the node, cache from a Secret."""
    devices = [("fuse", "/dev/fuse")] + ([("kvm", "/dev/kvm")] if args.kvm else [])
    env = [{"name": "IMGSMITH_CACHE_REMOTE",
            "valueFrom": {"secretKeyRef": {"name": args.cache_secret, "key": "remote"}}},
           {"name": "IMGSMITH_CONFIG", "value": "/etc/imgsmith/config.toml"}]
    mounts: list[dict[str, Any]] = [{"name": n, "mountPath": path} for n, path in devices]
    mounts += [{"name": "cache-config", "mountPath": "/etc/imgsmith", "readOnly": True},
               {"name": "out", "mountPath": "/out"}]
    volumes: list[dict[str, Any]] = [{"name": n, "hostPath": {"path": path, "type": "CharDevice"}}
                                     for n, path in devices]
    volumes += [{"name": "cache-config", "secret": {"secretName": args.cache_secret, "optional": True}},
                {"name": "out", "emptyDir": {}}]
    metadata: dict[str, Any] = {"name": _dns_name(job["name"]),
                                "labels": {"app.kubernetes.io/name": "imgsmith", "imgsmith/build": _dns_name(
                                    job["name"]).removeprefix("imgsmith-")},
                                "annotations": {"imgsmith/definition": job["definition"],
                                                "imgsmith/keys": json.dumps(job["keys"])}}
    if args.namespace:
        metadata["namespace"] = args.namespace
    container = {"name": "build", "image": args.image, "workingDir": args.workdir,
                 "command": ["imgsmith"], "args": build_argv(job, output_dir="/out", publish=args.publish),
                 "securityContext": {"privileged": True}, "env": env, "volumeMounts": mounts}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": dict(metadata["labels"])},
                                                     "spec": {"restartPolicy": "Never", "containers": [container],
                                                              "volumes": volumes}}}}


def run(args: argparse.Namespace) -> int:
    jobs = plan_jobs(args.definitions, args.overrides)
    if args.format == "github-matrix":
        print(json.dumps(github_matrix(jobs), separators=(",", ":")))  # one line, for $GITHUB_OUTPUT
    elif args.format == "k8s-jobs":
        import yaml
        print(yaml.safe_dump_all([k8s_job(j, args) for j in jobs], sort_keys=False), end="")
    elif args.json:
        print_json(jobs)
    else:
        for j in jobs:
            cached = sum(1 for x in j["layers"] if x["cached"])
            print(f"{j['name']}: {len(j['keys'])} layer(s), {cached} cached here: "
                  f"imgsmith {shlex.join(build_argv(j, output_dir='dist/' + j['name']))}")
    return 0
