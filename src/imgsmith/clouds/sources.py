"""The public pages the rules come from, one constant each (docs/clouds.md cites the same).

The format pages are the presets' own (:mod:`imgsmith.disk.presets`), so a format rule and
its preset cite one page.
"""

from __future__ import annotations

from ..disk.presets import (
    ALIYUN_IMPORT,
    AWS_FORMATS,
    AZURE_GENERIC,
    GCP_IMPORT,
    HYPERV_GEN2,
    OPENSTACK_FORMATS,
    OVF_SPEC,
    QEMU_FORMATS,
    TENCENT_IMPORT,
    VBOX_MANUAL,
)

__all__ = [
    "ALIYUN_BOOT", "ALIYUN_IMPORT", "ALIYUN_REQUIREMENTS", "ALIYUN_VIRTIO", "AWS_BOOT", "AWS_ENA", "AWS_FORMATS",
    "AWS_NVME", "AZURE_GEN2", "AZURE_GENERIC", "AZURE_HYPERV", "CI_DATASOURCES", "GCP_ARM", "GCP_CONFIGURE",
    "GCP_IMPORT", "GCP_OS", "HYPERV_GEN2", "OPENSTACK_FORMATS", "OPENSTACK_IMAGES", "OPENSTACK_PROPERTIES",
    "OVF_SPEC", "QEMU_FORMATS", "TENCENT_API", "TENCENT_IMPORT", "TENCENT_IMPORTING", "VBOX_MANUAL",
]

OPENSTACK_IMAGES = "https://docs.openstack.org/image-guide/openstack-images.html"
OPENSTACK_PROPERTIES = "https://docs.openstack.org/glance/latest/admin/useful-image-properties.html"
ALIYUN_REQUIREMENTS = "https://www.alibabacloud.com/help/en/ecs/user-guide/cloud-marketplace-mirror-specification"
ALIYUN_VIRTIO = "https://www.alibabacloud.com/help/en/ecs/user-guide/install-the-virtio-driver"
TENCENT_IMPORTING = "https://www.tencentcloud.com/document/product/213/4945"
AWS_NVME = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/nvme-ebs-volumes.html"
AWS_ENA = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/enhanced-networking-ena.html"
AZURE_HYPERV = ("https://learn.microsoft.com/en-us/troubleshoot/azure/virtual-machines/linux/"
                "linux-hyperv-issue")
GCP_OS = "https://cloud.google.com/compute/docs/images/building-custom-os"
GCP_CONFIGURE = "https://cloud.google.com/compute/docs/import/configuring-imported-images"
CI_DATASOURCES = "https://cloudinit.readthedocs.io/en/latest/reference/datasources.html"
ALIYUN_BOOT = "https://www.alibabacloud.com/help/en/ecs/user-guide/instance-startup-mode"
AWS_BOOT = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ami-boot.html"
AZURE_GEN2 = "https://learn.microsoft.com/en-us/azure/virtual-machines/generation-2"
GCP_ARM = "https://cloud.google.com/compute/docs/instances/arm-on-compute"
TENCENT_API = "https://www.tencentcloud.com/document/api/213/33270"
