"""imgsmith sysprep without the appliance: the registry, the list syntax, bad input, the CLI surface."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from guests import fresh_copy, sha256_file
from imgsmith.cli.main import build_parser, main
from imgsmith.errors import UsageError
from imgsmith.guest import appliance
from imgsmith.ops.accounts import RootPassword
from imgsmith.ops.base import ParseContext
from imgsmith.sysprep import (
    SYSPREP_OPERATIONS,
    SysprepOptions,
    SysprepPhase,
    check_options,
    default_names,
    list_operations,
    resolve_flags,
    resolve_selection,
    sysprep_disk,
)

ADDITIONS = {"cloud-init", "lvm-system-devices", "zsh-history"}
NOT_DEFAULT = {"ca-certificates", "firewall-rules", "flag-reconfiguration", "fs-uuids", "kerberos-data",
               "user-account"}


# --------------------------------------------------------------------------- the registry


def test_registry_has_virt_sysprep_148_operations_and_the_additions() -> None:
    assert len(SYSPREP_OPERATIONS) == 46
    upstream = {n for n, cls in SYSPREP_OPERATIONS.items() if cls.upstream}
    assert len(upstream) == 43 and set(SYSPREP_OPERATIONS) - upstream == ADDITIONS
    assert {n for n, cls in SYSPREP_OPERATIONS.items() if not cls.default} == NOT_DEFAULT
    assert len(default_names()) == 40  # virt-sysprep's 37 and the three additions


@pytest.mark.differential
def test_list_operations_matches_virt_sysprep() -> None:
    """Same names, same '*' markers, same headings as the installed virt-sysprep (no appliance needed)."""
    if shutil.which("virt-sysprep") is None:
        pytest.skip("virt-sysprep is not installed")
    theirs = subprocess.run(["virt-sysprep", "--list-operations"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    ours = [line for line in list_operations() if line.split(" ", 1)[0] not in ADDITIONS]
    assert ours == theirs


def test_list_operations_cli_needs_no_disk(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sysprep", "--list-operations"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out == list_operations()
    assert "customize * Customize the guest" in out
    assert "user-account   Remove the user accounts in the guest" in out
    assert "cloud-init * Remove cloud-init instance state and logs, keeping its configuration" in out


def test_headings_and_phases() -> None:
    for name, cls in SYSPREP_OPERATIONS.items():
        assert cls.heading and "\n" not in cls.heading and not cls.heading.endswith("."), name
    devices = {n for n, cls in SYSPREP_OPERATIONS.items() if cls.phase is SysprepPhase.DEVICES}
    assert devices == {"fs-uuids", "lvm-uuids"}
    assert {n: cls.order for n, cls in SYSPREP_OPERATIONS.items() if cls.order} == {"customize": 99}


def test_every_operation_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "sysprep.md").read_text(encoding="utf-8")
    for name in SYSPREP_OPERATIONS:
        assert f"`{name}`" in doc, name


# --------------------------------------------------------------------------- the list syntax


def test_no_flag_means_defaults_in_execution_order() -> None:
    names = resolve_flags([])
    assert names == default_names()
    assert names[-2:] == ["customize", "lvm-uuids"]  # customize last among filesystem ops, then devices
    assert names[:3] == ["abrt-data", "backup-files", "bash-history"]


def test_all_runs_devices_after_customize() -> None:
    names = resolve_selection("all")
    assert len(names) == 46
    assert names[-3:] == ["customize", "fs-uuids", "lvm-uuids"]


def test_virt_sysprep_manual_example() -> None:
    names = resolve_selection("firewall-rules,defaults,-tmp-files")
    assert set(names) == (set(default_names()) | {"firewall-rules"}) - {"tmp-files"}


def test_flags_accumulate_first_one_starts_empty() -> None:
    assert resolve_selection(["ssh-hostkeys,machine-id", "-machine-id,net-hwaddr"]) == ["net-hwaddr", "ssh-hostkeys"]
    assert resolve_selection(["defaults", "-ssh-userdir"]) == [n for n in default_names() if n != "ssh-userdir"]
    assert resolve_flags([("--enable", "machine-id"), ("--operations", "utmp")]) == ["machine-id", "utmp"]
    assert resolve_selection(["all", "-defaults"]) == [*sorted(NOT_DEFAULT - {"fs-uuids"}), "fs-uuids"]
    assert resolve_selection(" ssh-hostkeys , utmp ") == ["ssh-hostkeys", "utmp"]


@pytest.mark.parametrize(("spec", "message"), [
    ("foo", "--operations: unknown operation 'foo' (see --list-operations)"),
    ("ssh-userdr", "--operations: unknown operation 'ssh-userdr' (did you mean 'ssh-userdir'? see --list-operations)"),
    ("-foo", "--operations: unknown operation 'foo' (see --list-operations)"),
    ("defaults,,", "--operations: an empty item in 'defaults,,' (write NAME,NAME,-NAME with no empty items)"),
    ("defaults,-", "--operations: '-' without a name in 'defaults,-' (write NAME,NAME,-NAME with no empty items)"),
    ("+foo", "--operations: '+foo' is not an operation name (write NAME to add one, -NAME to remove one; "
             "see --list-operations)"),
    ("", "--operations: needs a comma-separated list of operations (see --list-operations)"),
    ("-all", "--operations: no operation left to run after '--operations -all' (see --list-operations)"),
])
def test_malformed_lists(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        resolve_selection(spec)
    assert exc.value.message == message


def test_options_for_unselected_operations_are_refused() -> None:
    op = RootPassword.parse("password:x", ParseContext(check_files=False))
    with pytest.raises(UsageError, match=r"^--root-password: customize options need the customize operation"):
        check_options(["ssh-hostkeys"], [op], SysprepOptions())
    with pytest.raises(UsageError, match=r"^--keep-user-accounts: the user-account operation is not selected"):
        check_options(default_names(), [], SysprepOptions(keep_users=frozenset({"a"})))
    with pytest.raises(UsageError, match=r"^--script: the script operation is not selected"):
        check_options(["utmp"], [], SysprepOptions(scripts=(Path("/bin/true"),)))
    check_options([*default_names(), "user-account"], [op], SysprepOptions(remove_users=frozenset({"a"})))


def test_library_rejects_before_any_launch(tmp_path: Path) -> None:
    disk = tmp_path / "missing.qcow2"
    before = appliance.launch_count()
    with pytest.raises(UsageError, match="unknown operation 'nope'"):
        sysprep_disk(disk, "defaults,nope")
    assert appliance.launch_count() == before


# --------------------------------------------------------------------------- the command line


def test_lists_starting_with_a_removal_are_values_not_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["sysprep", "-a", "d.img", "--operations", "-all", "--operations", "machine-id",
                              "--enable", "-machine-id,utmp", "-qv"])
    assert args.selection == [("--operations", "-all"), ("--operations", "machine-id"),
                              ("--enable", "-machine-id,utmp")]
    assert (args.quiet, args.verbose) == (True, True)
    assert "script" not in {name for name, _ in args.ops}  # --script is the sysprep operation's option
    args = parser.parse_args(["sysprep", "-a", "d.img", "--script", "/bin/true", "--hostname", "h"])
    assert (args.scripts, args.ops) == (["/bin/true"], [("hostname", "h")])


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real image that bad input must leave byte for byte alone (no appliance is launched here)."""
    return fresh_copy("ubuntu2204", tmp_path_factory.mktemp("bad-input"))


@pytest.mark.parametrize(("argv", "message"), [
    (["--operations", "foo"], "--operations: unknown operation 'foo' (see --list-operations)"),
    (["--operations", "defaults,,"],
     "--operations: an empty item in 'defaults,,' (write NAME,NAME,-NAME with no empty items)"),
    (["--operations", "+foo"], "--operations: '+foo' is not an operation name (write NAME to add one, "
                               "-NAME to remove one; see --list-operations)"),
    (["--enable", ""], "--enable: needs a comma-separated list of operations (see --list-operations)"),
    (["--enable", ","], "--enable: an empty item in ',' (write NAME,NAME,-NAME with no empty items)"),
    (["--enable", "-machine-id"],
     "--enable: no operation left to run after '--enable -machine-id' (see --list-operations)"),
    (["--operations", "defaults", "--operations", "-defaults,-customize,-lvm-uuids"],
     "--operations: no operation left to run after '--operations defaults --operations "
     "-defaults,-customize,-lvm-uuids' (see --list-operations)"),
    (["--operations", "ssh-hostkeys", "--root-password", "password:x"],
     "--root-password: customize options need the customize operation, which is not selected "
     "(add it to --operations)"),
    (["--remove-user-accounts", "bob"], "--remove-user-accounts: the user-account operation is not selected "
                                        "(add it: --operations defaults,user-account)"),
    (["--operations", "user-account", "--keep-user-accounts", "a,,b"],
     "--keep-user-accounts: empty user name in 'a,,b'"),
    (["--script", "/nonexistent/script.sh"], "--script: /nonexistent/script.sh: no such file on the host"),
])
def test_bad_input_one_line_exit_2_disk_untouched(disk: Path, argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    digest = sha256_file(disk)
    launches = appliance.launch_count()
    assert main(["sysprep", "-a", str(disk), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"imgsmith: error: {message}"]
    assert captured.out == ""
    assert appliance.launch_count() == launches
    assert sha256_file(disk) == digest
