"""Every module of imgsmith imports on its own, from a clean interpreter state.

An import cycle shows only for some import orders (the CLI happens to load the definition
before the publish modules, a library user may not), so each module is imported with every
imgsmith module forgotten first. One subprocess for all, so the test's own imports stay as
they are.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import imgsmith
names = sorted(m.name for m in pkgutil.walk_packages(imgsmith.__path__, "imgsmith.")
               if m.name != "imgsmith.__main__")  # running it is its import
bad = []
for name in names:
    for key in [k for k in sys.modules if k == "imgsmith" or k.startswith("imgsmith.")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(bad))
"""


def test_every_module_imports_first() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    count, *failures = r.stdout.splitlines()
    assert int(count) > 100
    assert [f for f in failures if f] == []
