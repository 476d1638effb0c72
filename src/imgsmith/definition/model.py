"""The definition model, declared once: parsing, defaults, docs and JSON Schema come from here.

Steps are kept as raw one-key mappings in the model (``{timezone: Asia/Shanghai}``)
and turned into Operation objects by the loader, through each operation's own
``from_yaml`` — the same parser the command line uses, so a step accepts exactly
the string virt-customize takes for that option.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..disk.sizes import SizeSpec, parse_size
from ..errors import UsageError
from ..source.bootstrap import BootstrapSpec

if TYPE_CHECKING:
    from ..boot.test import Check as BootCheck

__all__ = ["DEFINITION_VERSION", "Definition", "Layer", "Output", "PublishEntry", "SourceSection", "SysprepSection",
           "TestSection"]

DEFINITION_VERSION = 1  # the ``version:`` a definition file carries (not the layer cache's format)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceSection(_Strict):
    """Exactly one of ``file``, ``url`` or ``bootstrap``."""

    file: str | None = Field(None, description="a local image, relative to the definition file")
    url: str | None = Field(None, description="an http(s) URL of the base image")
    checksum: str | None = Field(None, description="sha256:HEX or sha512:HEX of the image")
    checksum_url: str | None = Field(None, alias="checksum-url",
                                     description="URL of a SUMS file (GNU or BSD lines) listing the image")
    format: str | None = Field(None, description="the image's format; default: detected by qemu-img")
    bootstrap: BootstrapSpec | None = Field(None, description="build the base from distribution packages")

    @model_validator(mode="after")
    def _one_kind(self) -> SourceSection:
        kinds = [k for k in ("file", "url", "bootstrap") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of file, url or bootstrap")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError("url must start with http:// or https://")
        if self.bootstrap is not None and (self.checksum or self.checksum_url):
            raise ValueError("a bootstrap source has no checksum")
        return self

    @property
    def kind(self) -> str:
        return "file" if self.file is not None else "url" if self.url is not None else "bootstrap"


class Layer(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="a short name shown in the plan")
    steps: list[dict[str, Any]] = Field(min_length=1, description="operations: one-key mappings "
                                        "{option: value}, value as virt-customize takes it")
    memsize: int | None = Field(None, ge=256, description="appliance memory for this layer, MiB (a build's "
                                "--memsize overrides it); the chroot backend has no appliance and ignores it")


class SysprepSection(_Strict):
    operations: str | list[str] = Field("defaults", description="virt-sysprep list syntax: defaults, all, -name")
    enable: str | list[str] | None = None
    keep_user_accounts: list[str] = Field(default_factory=list, alias="keep-user-accounts")
    remove_user_accounts: list[str] = Field(default_factory=list, alias="remove-user-accounts")


class Output(_Strict):
    preset: str | None = Field(None, description="a cloud preset: openstack, aliyun, azure, gcp, vmware, ...")
    format: str | None = Field(None, description="a qemu-img format: qcow2, raw, vpc, vhdx, vmdk, vdi")
    options: dict[str, str | int | bool] = Field(default_factory=dict, description="format options (-o k=v)")
    name: str | None = Field(None, description="file name in the output directory")

    @model_validator(mode="after")
    def _one_kind(self) -> Output:
        if (self.preset is None) == (self.format is None):
            raise ValueError("give exactly one of preset or format")
        if self.preset is not None and self.options:
            raise ValueError("options go with format, not preset")
        return self


class CheckModel(_Strict):
    run: str
    expect: str | None = None
    expect_rc: int = Field(0, alias="expect-rc")

    def to_check(self) -> BootCheck:
        from ..boot.test import Check  # paramiko is heavy: load it only when a boot test runs
        return Check(self.run, self.expect, self.expect_rc)


class TestSection(_Strict):
    boot: bool = Field(True, description="boot the result under qemu with a cloud-init seed")
    timeout: int | None = Field(None, ge=30, description="seconds the guest has to finish booting, as "
                                "`imgsmith test --timeout`; default: from the accelerator (KVM or TCG)")
    required: bool = Field(True, description="fail the build when the boot test fails")
    checks: list[CheckModel] = Field(default_factory=list)
    cloud: str | None = Field(None, description="boot on that cloud's own datasource, emulated locally "
                              "(openstack, tencent: config drive; aws: IMDSv2; aliyun: metadata service), "
                              "as `imgsmith test --cloud`; default: a NoCloud seed")
    firmware: list[Literal["bios", "uefi", "secure-boot"]] = Field(
        default_factory=list, description="boot once with each firmware (as `imgsmith test --firmware`); "
                                          "default: every firmware the image's layout supports")

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from ..boot.datasource import datasource_for
        try:
            return datasource_for(value).cloud
        except UsageError as exc:
            raise ValueError(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None


class PublishEntry(_Strict):
    """One destination of ``imgsmith publish``: which output goes where, and how it is named there.

    The kind (``to:``) decides which of the other keys it uses; resolve.py refuses a key the
    kind does not read, so a typo'd ``bucket:`` on a Glance entry is not silently ignored.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="what `--to` names")
    output: str = Field(description="the output to publish: its file name or its preset")
    to: str = Field(description="glance | s3 | aws | aliyun | tencent | oci://REGISTRY/REPO:TAG")
    cloud: str | None = Field(None, description="glance: the clouds.yaml entry (else OS_CLOUD / OS_* variables)")
    endpoint: str | None = Field(None, description="glance: the image endpoint (skips the catalog); s3: the "
                                 "S3-compatible endpoint URL (OSS, COS, MinIO); default: the cloud's own")
    api_endpoint: str | None = Field(None, alias="api-endpoint",
                                     description="aliyun, tencent: the ECS/CVM API endpoint URL (default: the "
                                                 "region's public one)")
    region: str | None = Field(None, description="s3: the bucket's region; aws, aliyun, tencent: the import's "
                               "region (the bucket must be in it)")
    bucket: str | None = Field(None, description="s3: the bucket the object goes into (OSS/COS for aliyun/tencent)")
    key: str | None = Field(None, description="s3: the object name (default: the image name plus the output's "
                            "extension); {name}, {date}, {sha256:12} as for image-name")
    image_name: str = Field("{name}-{date}", alias="image-name",
                            description="the image (or object) name; {name} the definition's name, {date} "
                                        "YYYYMMDD (UTC), {sha256:12} the first 12 digits of the output's sha256")
    properties: dict[str, str | int | bool] = Field(default_factory=dict,
                                                    description="glance: extra image properties (win over ours)")
    visibility: Literal["private", "shared", "community", "public"] | None = Field(
        None, description="glance: image visibility (default: the cloud's, private)")
    tags: list[str] = Field(default_factory=list, description="glance: image tags; s3: object tags (key=value)")
    insecure: bool = Field(False, description="oci: plain http to the registry (a local test registry)")


class Definition(_Strict):
    version: Literal[1] = Field(description="format version of this file")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str | None = None
    source: SourceSection
    size: str | None = Field(None, description="grow the disk (and last partition and filesystem) to this size")
    layers: list[Layer] = Field(default_factory=list)
    sysprep: SysprepSection | None = None
    outputs: list[Output] = Field(default_factory=list)
    test: TestSection | None = None
    publish: list[PublishEntry] = Field(default_factory=list, description="where `imgsmith publish` (and "
                                        "`imgsmith build --publish`) sends the outputs")
    matrix: dict[str, list[str | int]] | None = Field(
        None, description="named axes, e.g. {cloud: [openstack, aliyun]}: one variant per combination, "
                          "NAME-VALUE..., with ${matrix.AXIS} replaced in string values (docs/farm.md)")
    backend: Literal["auto", "appliance", "chroot"] = Field(
        "auto", description="how steps run: appliance (libguestfs VM), chroot (root only; mounts the image on the "
                            "host and sandboxes its commands; much faster without KVM), or auto (chroot when root "
                            "and the source is verified by checksum or bootstrapped, else the appliance)")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: object) -> str | None:
        """The same parser as ``imgsmith resize`` (disk/sizes.py): one meaning of ``20G`` everywhere."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError("a size is a string like 20G, 512M or +2G")  # noqa: TRY004 - pydantic wants ValueError
        try:
            parse_size(str(value))
        except UsageError as exc:
            raise ValueError(exc.message) from None
        return str(value)

    @property
    def size_spec(self) -> SizeSpec | None:
        return parse_size(self.size) if self.size is not None else None

    @model_validator(mode="after")
    def _unique_names(self) -> Definition:
        names = [layer.name for layer in self.layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"layer names must be unique: {', '.join(dupes)}")
        return self
