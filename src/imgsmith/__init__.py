"""imgsmith: cloud VM disk images as code.

The public library API lives in the sub-packages; the CLI in :mod:`imgsmith.cli`
is a thin layer over it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

# The cloud-ready operation is made from the cloud rules (clouds/ sits above ops/ in the import
# layers), so it cannot be imported by imgsmith.ops itself; importing it here registers it in
# CUSTOMIZE_OPERATIONS before any user of the registry (definitions, customize, docs) runs.
from .clouds import ready as _cloud_ready  # noqa: F401

