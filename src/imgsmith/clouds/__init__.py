"""Cloud readiness: each target's rules, checked offline on an image before it is uploaded.

One module per cloud holds its :class:`~imgsmith.clouds.base.Profile` (accepted formats,
boot modes, drivers, datasources) and its rules as data; the shared check functions are
in :mod:`imgsmith.clouds.checks`, and :mod:`imgsmith.clouds.check` runs them over one
read-only session. ``PROFILES`` is the registry, in the order ``--for`` documents.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import aliyun, aws, azure, gcp, hypervisors, openstack, tencent
from .base import Finding, Profile, Rule

__all__ = ["CLOUDS", "PROFILES", "Finding", "Profile", "Rule"]

PROFILES: Mapping[str, Profile] = {p.name: p for p in (
    openstack.PROFILE, aliyun.PROFILE, tencent.PROFILE, aws.PROFILE, azure.PROFILE, azure.GEN2, gcp.PROFILE,
    hypervisors.KVM, hypervisors.VMWARE, hypervisors.VIRTUALBOX, hypervisors.HYPERV,
)}
CLOUDS = tuple(PROFILES)
