"""Generate docs/operations.md from the operation registry, so help and docs cannot drift.

``make docs`` writes the file; a test fails when the committed file differs.
"""

from __future__ import annotations

from .clouds import ready as _cloud_ready  # noqa: F401 -- registers `cloud-ready` in the registry
from .ops import CUSTOMIZE_OPERATIONS
from .ops.base import CustomizePhase

__all__ = ["render_operations_doc"]

HEADER = """\
# Customize operations

Generated from the operation registry by `make docs` — do not edit by hand.

Every operation is a `imgsmith customize` option with virt-customize's syntax, and the
same string is accepted as a step in a definition file (`- timezone: Asia/Shanghai`).
Operations run in the order given, except that passwords are set after everything
else and SELinux relabelling runs last (virt-customize's order).

| option | argument | YAML value | what it does |
|---|---|---|---|
"""

NOTES = """
## Notes and deliberate differences from virt-customize 1.48

- **`--edit` expressions** are Perl `s/regex/replacement/flags` run on Python's `re`, line by
  line with each line's newline included (so `s/\\s+$//` also eats the newline, as in Perl).
  Accepted: any delimiter and bracketing pairs (`s{a}{b}`), `$1 ${1} \\1 $& $+{name}` in the
  replacement, flags `g i m s x`, `\\z \\Z \\A \\h \\Q..\\E`, `(?<name>..)`, `\\k<name>`, POSIX
  classes `[[:digit:]]`. Refused with a clear error: `/e`, `tr///`, `\\U \\L \\u \\l` case
  changes, variable or array interpolation (`$foo`, `@bar`; write `\\$`/`\\@` for literals),
  `\\G \\K \\R`. Remaining difference: Unicode classes follow Python (`\\w` matches non-ASCII
  letters in text that is valid UTF-8).
- **Passwords** are hashed in-process (host libcrypt): nothing secret reaches a child
  process's argv. Default hash per guest: yescrypt on EL >= 9, Fedora >= 30, Debian >= 11,
  Ubuntu >= 20; SHA-512 otherwise. `hashed:$6$...` installs a ready hash.
  An unknown user is an error (1.48 silently ignores it). `locked:SELECTOR` (or `lock:`)
  writes `!!` before the hash and `locked` alone writes `!!*`, exactly as virt-customize.
- **`--ssh-inject USER`** (or `USER:`) with no selector injects the newest file in
  `$HOME/.ssh` named `id*.pub`, ignoring `*-cert.pub` (virt-customize's rule).
- **`--upload` of a missing host file** and **`--commands-from-file` of a missing file** fail
  before the disk is touched (1.48 leaves an empty file, or exits 0 with an exception text).
- **SELinux relabel** is automatic for guests that use SELinux (`--no-selinux-relabel` turns it
  off); setfiles with the guest policy's file_contexts when present, else `/.autorelabel`.
  Whether the guest uses SELinux is decided after all other operations, on their result.
  With `--selinux-relabel` the test is virt-customize's: `/usr/sbin/load_policy` and
  `/etc/selinux/config` both exist (so `SELINUX=disabled` is still relabelled, as in 1.48);
  the automatic relabel also needs `SELINUX=enforcing` or `permissive`.
- **`--commands-from-file`** follows virt-customize's parser: a backslash at the end of a line
  is removed but the newline stays, and the next line is kept with its leading blanks
  (`write /f:a \\` then `  b` writes `a \\n  b`); only a logical line's leading blanks (space,
  tab, CR, LF) are trimmed; a backslash on the last line keeps a newline; a flag ignores any
  argument after it.
- **machine-id**: an empty /etc/machine-id is filled only while operations run (package
  scriptlets may need one) and emptied again, so clones do not share an id.
- **`--chmod 700:F`** is decimal, as in virt-customize; imgsmith warns when the digits look octal.
- Command output goes to `/tmp/builder.log` in the guest, as with virt-customize.
"""


def _yaml_value(name: str, metavar: str | None) -> str:
    if metavar is None:
        return "`true`"
    return f"`\"{metavar}\"`"


def render_operations_doc() -> str:
    rows = []
    for name in sorted(CUSTOMIZE_OPERATIONS):
        cls = CUSTOMIZE_OPERATIONS[name]
        when = {CustomizePhase.PASSWORDS: " (runs after all other operations)",
                CustomizePhase.RELABEL: " (runs last)"}.get(cls.phase, "")
        rows.append(f"| `--{name}` | `{cls.metavar or ''}` | {_yaml_value(name, cls.metavar)} "
                    f"| {cls.help}{when} |")
    rows.append("| `--commands-from-file` | `FILENAME` | — | read operations from a file, one per line |")
    return HEADER + "\n".join(rows) + "\n" + NOTES
