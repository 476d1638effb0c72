"""``imgsmith publish``: a build's outputs into Glance, an S3-compatible store, or an OCI registry.

spec.py resolves the definition's ``publish:`` section at load (cheap, no SDK); base.py is
the one interface (plan -> find -> upload -> register -> wait); glance.py, s3.py and oci.py are
the destinations; run.py checks and orders them and records the result in the manifest.
"""

from __future__ import annotations

__all__: list[str] = []
