"""Parsing and validation of customize options: no appliance, so these are fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgsmith.errors import UsageError
from imgsmith.ops import CUSTOMIZE_OPERATIONS
from imgsmith.ops.accounts import PasswordSelector, RootPassword
from imgsmith.ops.base import ParseContext, Secret
from imgsmith.ops.cmdline import parse_commands_file, parse_operations, split_logical_lines
from imgsmith.ops.crypto import verify_password
from imgsmith.ops.files import Chmod, Link
from imgsmith.ops.perl_edit import parse_subst

IMGSMITH = [sys.executable, "-m", "imgsmith.cli.main"]

VIRT_CUSTOMIZE_148 = {
    "append-line", "chmod", "copy", "copy-in", "delete", "edit", "firstboot", "firstboot-command",
    "firstboot-install", "hostname", "install", "link", "mkdir", "move", "password", "root-password", "run",
    "run-command", "scrub", "selinux-relabel", "ssh-inject", "timezone", "touch", "truncate",
    "truncate-recursive", "uninstall", "update", "upload", "write",
}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMGSMITH, *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_registry_has_every_virt_customize_option() -> None:
    assert set(CUSTOMIZE_OPERATIONS) >= VIRT_CUSTOMIZE_148
    assert "script" in CUSTOMIZE_OPERATIONS


def test_help_lists_every_operation_with_syntax() -> None:
    out = run_cli("customize", "--help").stdout
    for name, cls in CUSTOMIZE_OPERATIONS.items():
        assert f"--{name}" in out
        if cls.metavar:
            assert f"--{name} {cls.metavar}" in out
    assert "--commands-from-file FILENAME" in out


def test_operations_doc_matches_registry() -> None:
    from imgsmith.docs import render_operations_doc
    doc = Path(__file__).parent.parent / "docs" / "operations.md"
    assert doc.read_text() == render_operations_doc(), "docs/operations.md is stale: run `make docs`"


@pytest.mark.parametrize(("expr", "text", "expected"), [
    ("s/foo/bar/", "foo foo\n", "bar foo\n"),
    ("s/foo/bar/g", "foo foo\n", "bar bar\n"),
    ("s|/usr|/opt|", "/usr/bin\n", "/opt/bin\n"),
    ("s{(\\w+)=(\\w+)}{$2=$1}g", "a=b c=d\n", "b=a d=c\n"),
    ("s/(\\w+)/${1}x/", "ab cd\n", "abx cd\n"),
    ("s/(\\w+)/\\1\\1/", "ab\n", "abab\n"),
    ("s/b/[$&]/", "abc\n", "a[b]c\n"),
    ("s/FOO/x/i", "foo\n", "x\n"),
    ("s/\\s+$//", "abc   \n", "abc"),  # Perl: \s+ swallows the line's newline too
    ("s/^#?PermitRootLogin.*/PermitRootLogin no/", "#PermitRootLogin yes\nX\n", "PermitRootLogin no\nX\n"),
    ("s/^/# /mg", "a\n\n", "# a\n# \n"),  # /m ^ does not match after the final newline (Perl rule)
    ("s/a\\z/b/", "a", "b"),
    ("s/(?<k>\\w+)=1/$+{k}=2/", "x=1\n", "x=2\n"),
    ("s/[[:digit:]]+/N/g", "a1b22\n", "aNbN\n"),
    ("s/\\Q1.2\\E/x/", "1.2 1x2\n", "x 1x2\n"),
    ("s/a/\\$\\@/", "a\n", "$@\n"),
    ("s/x/\\t/", "x\n", "\t\n"),
])
def test_perl_substitution(expr: str, text: str, expected: str) -> None:
    assert parse_subst(expr).apply(text) == expected


@pytest.mark.parametrize(("expr", "message"), [
    ("s/(/x/", "bad regex '('"),
    ("s/a/b/e", "the /e flag"),
    ("tr/a/b/", "only s/regex/replacement/flags"),
    ("s/a/$foo/", "variable interpolation"),
    ("s/a/b", "unterminated"),
    ("s/a/\\U$1/", "case-changing"),
    ("s/(a)/$2/", "refers to group 2"),
    ("s/a/b/q", "unsupported regex flag 'q'"),
])
def test_perl_substitution_rejects(expr: str, message: str) -> None:
    with pytest.raises(UsageError, match=None) as info:
        parse_subst(expr)
    assert message in info.value.message


def test_commands_file_syntax(tmp_path: Path) -> None:
    f = tmp_path / "cmds"
    f.write_text(
        "# a comment\n"
        "\n"
        "   run-command echo 'a  b'   \n"
        "edit /etc/f:\\\n"
        "   s/^OPT=.*/OPT=ok/\n"
        "selinux-relabel\n"
        "write /x:a:b c\n"
    )
    assert parse_commands_file(f) == [
        ("run-command", "echo 'a  b'   "),  # no unquoting; trailing blanks kept
        ("edit", "/etc/f:\n   s/^OPT=.*/OPT=ok/"),  # newline and blanks kept (Perl ignores them)
        ("selinux-relabel", ""),
        ("write", "/x:a:b c"),
    ]


@pytest.mark.parametrize(("text", "lines"), [  # libguestfs-common mlstdutils/std_utils_tests.ml, plus
    ("", []),  # (a trailing empty logical line is dropped: empty lines are skipped anyway)
    ("A", [(1, "A")]),
    ("A\n", [(1, "A")]),
    ("A\nB", [(1, "A"), (2, "B")]),
    ("A\\", [(1, "A\n")]),
    ("A\\\nB", [(1, "A\nB")]),
    ("A\nB\\\nC", [(1, "A"), (2, "B\nC")]),
    ("A\nB\\\nC\nD", [(1, "A"), (2, "B\nC"), (4, "D")]),
    ("A\nB\\\nC\\\nD", [(1, "A"), (2, "B\nC\nD")]),
    ("A\\\nB\n", [(1, "A\nB")]),
    ("A\\\nB\\\n", [(1, "A\nB\n")]),
    ("a \\\n  b", [(1, "a \n  b")]),  # blanks on both sides of the break are kept
    ("a\\\\\nb", [(1, "a\\\nb")]),  # two backslashes: one is kept, the line still continues
    ("a\\\r\nb", [(1, "a\\\r"), (2, "b")]),  # CRLF: the byte before \n is \r, no continuation
    ("a\\\n\nb", [(1, "a\n"), (3, "b")]),  # continuing into an empty line ends there
])
def test_logical_lines_as_virt_customize_splits_them(text: str, lines: list[tuple[int, str]]) -> None:
    assert split_logical_lines(text) == lines


def test_commands_file_continuations_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "cmds"
    f.write_text("write /f:first part \\\n   second part\n"
                 "# comment \\\nwrite /never:x\n"
                 "\t write /t:x\n"
                 "update now please\n"  # a flag ignores the rest of its line, as in virt-customize
                 "write /crlf:x\r\n"  # read as bytes: no newline translation
                 "write /e:end\\")
    assert parse_commands_file(f) == [
        ("write", "/f:first part \n   second part"),
        ("write", "/t:x"),
        ("update", ""),
        ("write", "/crlf:x\r"),
        ("write", "/e:end\n"),
    ]
    ff = tmp_path / "ff"
    ff.write_text("\fwrite /x:y\n")  # String.triml trims only space, tab, CR and LF
    with pytest.raises(UsageError, match=r"unknown operation '\\x0cwrite'"):
        parse_commands_file(ff)


def test_commands_file_errors(tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    nested.write_text("commands-from-file other\n")
    with pytest.raises(UsageError, match="cannot be nested"):
        parse_commands_file(nested)
    unknown = tmp_path / "unknown"
    unknown.write_text("write /a:b\nfrobnicate x\n")
    with pytest.raises(UsageError, match=r"unknown:2: unknown operation 'frobnicate'"):
        parse_commands_file(unknown)
    with pytest.raises(UsageError, match="no such file"):
        parse_operations([("commands-from-file", str(tmp_path / "missing"))], ParseContext(base_dir=tmp_path))


def test_operations_keep_command_line_order(tmp_path: Path) -> None:
    cmds = tmp_path / "c"
    cmds.write_text("mkdir /b\n")
    ops = parse_operations([("touch", "/a"), ("commands-from-file", str(cmds)), ("delete", "/c")],
                           ParseContext(base_dir=tmp_path))
    assert [op.describe() for op in ops] == ["--touch /a", "--mkdir /b", "--delete /c"]


def test_chmod_is_decimal_without_leading_zero() -> None:
    ctx = ParseContext()
    assert Chmod.parse("0755:/f", ctx).mode == 0o755
    assert Chmod.parse("700:/f", ctx).mode == 700  # virt-customize's documented quirk
    with pytest.raises(UsageError, match="not a number"):
        Chmod.parse("rwx:/f", ctx)


def test_link_several_links() -> None:
    op = Link.parse("/t:/a:/b", ParseContext())
    assert op.links == ("/a", "/b")


def test_password_selectors(tmp_path: Path) -> None:
    ctx = ParseContext(base_dir=tmp_path)
    (tmp_path / "pw").write_text("fromfile\nsecond line\n")
    assert PasswordSelector.parse("file:pw", "password", ctx).value == Secret("fromfile")
    sel = PasswordSelector.parse("locked:password:abc", "password", ctx)
    assert sel.locked and sel.kind == "password"
    assert PasswordSelector.parse("locked", "password", ctx).kind == "disabled"
    assert PasswordSelector.parse("random", "password", ctx).kind == "random"
    hashed = PasswordSelector.parse("hashed:$6$salt$abc", "password", ctx)
    assert hashed.kind == "hashed"
    for bad in ("plain", "password:", "file:", "hashed:nothash", "random:x"):
        with pytest.raises(UsageError):
            PasswordSelector.parse(bad, "password", ctx)


def test_secrets_never_shown(tmp_path: Path) -> None:
    op = RootPassword.parse("password:hunter2", ParseContext(base_dir=tmp_path))
    assert "hunter2" not in op.describe()
    assert "hunter2" not in repr(op)
    assert "hunter2" not in str(op.cache_token())


def test_shadow_field_hash_verifies() -> None:
    sel = PasswordSelector.parse("password:s3cret", "root-password", ParseContext())
    field = sel.shadow_field("sha512", "root", None)  # type: ignore[arg-type]
    assert field.startswith("$6$") and verify_password("s3cret", field)
    locked = PasswordSelector.parse("locked:password:s3cret", "root-password", ParseContext())
    field = locked.shadow_field("yescrypt", "root", None)  # type: ignore[arg-type]
    assert field.startswith("!!$y$") and verify_password("s3cret", field[2:])  # virt-customize's "!!"
    for spelled in ("locked", "lock", "locked:disabled", "lock:disable", "locked:locked"):
        sel = PasswordSelector.parse(spelled, "password", ParseContext())
        assert sel.shadow_field("sha512", "u", None) == "!!*", spelled  # type: ignore[arg-type]


def test_bad_input_errors_before_the_appliance(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    cases = [
        (["--upload", "missing.txt:/etc/motd"], "--upload: missing.txt: no such file on the host"),
        (["--edit", "/etc/f:s/(/x/"], "--edit /etc/f: bad regex '('"),
        (["--root-password", "passwd:x"], "--root-password: unknown password selector 'passwd'"),
        (["--ssh-inject", "root:file:nokey.pub"], "--ssh-inject: nokey.pub: no such file on the host"),
        (["--run", "nope.sh"], "--run: nope.sh: no such file on the host"),
        (["--chmod", "0755"], "--chmod: expected PERMISSIONS:FILE"),
        (["--timezone", "../../etc/passwd"], "is not a timezone name"),
        (["--commands-from-file", "nofile"], "--commands-from-file: nofile: no such file on the host"),
        (["--run-command", ""], "--run-command: the command is empty"),
        (["--write", "/etc/motd"], "--write: expected FILE:CONTENT, got '/etc/motd'"),
        (["--append-line", "/etc/motd"], "--append-line: expected FILE:LINE, got '/etc/motd'"),
        (["--copy", "/a"], "--copy: expected SOURCE:DEST, got '/a'"),
        (["--copy-in", "nodir:/opt"], "--copy-in: nodir: no such file on the host"),
        (["--delete", ""], "--delete: a guest path is required"),
        (["--firstboot", "nope.sh"], "--firstboot: nope.sh: no such file on the host"),
        (["--firstboot-command", ""], "--firstboot-command: the command is empty"),
        (["--firstboot-install", "a;b"], "--firstboot-install: 'a;b' is not a valid package name"),
        (["--hostname", "bad_host!"], "--hostname: 'bad_host!' is not a valid hostname"),
        (["--install", "a;b"], "--install: 'a;b' is not a valid package name"),
        (["--uninstall", "a;b"], "--uninstall: 'a;b' is not a valid package name"),
        (["--link", "/t"], "--link: expected TARGET:LINK[:LINK..], got '/t'"),
        (["--mkdir", ""], "--mkdir: a guest path is required"),
        (["--move", "/a"], "--move: expected SOURCE:DEST, got '/a'"),
        (["--password", "root"], "--password: expected USER:SELECTOR, got 'root'"),
        (["--scrub", ""], "--scrub: a guest path is required"),
        (["--touch", ""], "--touch: a guest path is required"),
        (["--truncate", ""], "--truncate: a guest path is required"),
        (["--truncate-recursive", ""], "--truncate-recursive: a guest path is required"),
        (["--script", "nope.sh"], "--script: nope.sh: no such file on the host"),
        (["--cloud-ready", "openstack,digitalocean"], "--cloud-ready: unknown cloud 'digitalocean' (known: openstack,"),
        (["--cloud-ready", ","], "--cloud-ready needs at least one cloud"),
        (["--initramfs-drivers", "virtio_blk;rm"], "--initramfs-drivers: 'virtio_blk;rm' is not a valid kernel module"),
        (["--datasource-list", "Ali Yun"], "--datasource-list: 'Ali Yun' is not a valid cloud-init datasource name"),
        (["--serial-console", "com1"], "--serial-console: 'com1' is not a console device"),
    ]
    before = disk.read_bytes()
    for args, message in cases:
        r = run_cli("customize", "-a", str(disk), *args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert lines[0].startswith("imgsmith: error: ") and message in lines[0], (args, r.stderr)
    assert disk.read_bytes() == before


def test_bad_disks(tmp_path: Path) -> None:
    r = run_cli("customize", "-a", str(tmp_path / "nope.qcow2"), "--touch", "/a")
    assert r.returncode == 2
    assert r.stderr.strip() == f"imgsmith: error: {tmp_path / 'nope.qcow2'}: no such disk image"
    good = tmp_path / "good.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", good, "64M"], check=True)
    truncated = tmp_path / "truncated.qcow2"
    truncated.write_bytes(good.read_bytes()[:1000])
    r = run_cli("customize", "-a", str(truncated), "--touch", "/a")
    assert r.returncode == 2
    assert "imgsmith: error:" in r.stderr and str(truncated) in r.stderr
    assert truncated.read_bytes() == good.read_bytes()[:1000]
    r = run_cli("customize", "-a", str(good), "--format", "raw", "--touch", "/a")
    assert r.returncode == 2 and "is qcow2, not raw" in r.stderr


def test_unknown_option_is_usage_error(tmp_path: Path) -> None:
    r = run_cli("customize", "-a", "x", "--frobnicate", "y")
    assert r.returncode == 2 and "unrecognized arguments: --frobnicate" in r.stderr


def test_ssh_inject_default_key_is_the_newest_id_pub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """virt-customize's ssh_key.ml: newest ``id*.pub`` in $HOME/.ssh, ``*-cert.pub`` ignored."""
    from imgsmith.ops.accounts import SshInject
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    for name, age in (("id_ed25519.pub", 30), ("id_rsa.pub", 20), ("id_rsa-cert.pub", 1), ("other.pub", 1),
                      ("id_ecdsa", 1)):
        (ssh / name).write_text(f"key-{name}\n")
        os.utime(ssh / name, (1_700_000_000 - age, 1_700_000_000 - age))
    monkeypatch.setenv("HOME", os.fspath(tmp_path))
    for arg in ("root", "root:"):
        op = SshInject.parse(arg, ParseContext())
        assert (op.key, op.source) == ("key-id_rsa.pub", f"file:{ssh / 'id_rsa.pub'}")
    (ssh / "id_rsa.pub").unlink()
    (ssh / "id_ed25519.pub").unlink()
    with pytest.raises(UsageError, match=r"no public key file \(id\*\.pub\) in"):
        SshInject.parse("root", ParseContext())


def test_every_package_list_option_takes_a_yaml_list_or_the_comma_string(tmp_path: Path) -> None:
    """install, uninstall and firstboot-install share one argument shape (a YAML list used to fail for
    firstboot-install)."""
    ctx = ParseContext(base_dir=tmp_path, check_files=False, origin="test")
    for name in ("install", "uninstall", "firstboot-install"):
        cls = CUSTOMIZE_OPERATIONS[name]
        from_list, from_text = cls.from_yaml(["jq", "tmux"], ctx), cls.from_yaml("jq,tmux", ctx)
        assert from_list == from_text and from_list.argument() == "jq,tmux", name
        with pytest.raises(UsageError):
            cls.from_yaml([], ctx)
