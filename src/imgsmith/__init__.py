"""imgsmith: cloud VM disk images as code.

The public library API lives in the sub-packages; the CLI in :mod:`imgsmith.cli`
is a thin layer over it.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
