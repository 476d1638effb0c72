"""Meta-test: every registered operation has a guest test and a bad-input test.

Detection reads the test sources (AST, not mocks): an operation has a *guest test* when its
option (``--NAME``, or for sysprep its name) is a string literal in a module marked ``guest``
or ``boot``, i.e. it is run on a real guest; it has a *bad-input test* when its option heads
a case of the bad-input tables, whose cases each assert exit status 2, one error line and an
untouched disk. A new operation registered without both fails here, by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import imgsmith.clouds.ready  # noqa: F401 -- registers `cloud-ready`, as every user of the registry does
from imgsmith.ops import CUSTOMIZE_OPERATIONS as CUSTOMIZE
from imgsmith.sysprep import SYSPREP_OPERATIONS as SYSPREP

TESTS = Path(__file__).parent

# Flags without an argument: the only bad input is an argument, which argparse itself refuses.
CUSTOMIZE_NO_BAD_INPUT = {
    "selinux-relabel": "a flag: takes no argument",
    "update": "a flag: takes no argument",
    "centos7-vault-repos": "a flag: takes no argument",
    "cloud-init-enable": "a flag: takes no argument",
    "fstab-uuid": "a flag: takes no argument",
    "grub-uuid": "a flag: takes no argument",
    "remove-mac-binding": "a flag: takes no argument",
    "remove-swap": "a flag: takes no argument",
}
# Sysprep operations have no fields; those with options of their own must have bad-input cases for
# them. The others take no input but their name, whose bad forms (unknown, misspelt, empty items) are
# tested once for all in test_sysprep.py's test_bad_input_one_line_exit_2_disk_untouched.
SYSPREP_OPTIONS = {"script": "--script", "user-account": "--remove-user-accounts", "customize": "--root-password"}


def _marked_modules(*marks: str) -> list[ast.Module]:
    out = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                         for t in node.targets)):
                continue
            if any(f"mark.{m}" in ast.unparse(node.value) for m in marks):
                out.append(tree)
    return out


def _strings(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _bad_input_heads(module: str, function: str) -> set[str]:
    """First option of every case in a bad-input table (a ``cases`` list or the parametrize list)."""
    tree = ast.parse((TESTS / module).read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    tables: list[ast.expr] = [n.value for n in ast.walk(fn)
                              if isinstance(n, ast.Assign) and isinstance(n.value, ast.List)]
    tables += [d.args[1] for d in fn.decorator_list if isinstance(d, ast.Call) and len(d.args) > 1]
    heads: set[str] = set()
    for table in tables:
        for case in getattr(table, "elts", []):
            argv = case.elts[0] if isinstance(case, ast.Tuple) else None
            if isinstance(argv, ast.List):
                options = (str(e.value) for e in argv.elts if isinstance(e, ast.Constant))
                heads |= {o for o in options if o.startswith("--")}
    return heads


GUEST_STRINGS = set().union(*(_strings(m) for m in _marked_modules("guest", "boot")))


# Operations a guest test runs through a definition file rather than an option:
# op -> (guest-marked module, test function, the definition it builds).
VIA_DEFINITION = {
    "centos7-vault-repos": ("test_build.py", "test_centos7_example_from_a_local_mirror", "examples/centos7.yaml"),
}


def test_every_customize_operation_has_a_guest_test() -> None:
    missing = sorted(n for n in CUSTOMIZE if f"--{n}" not in GUEST_STRINGS and n not in VIA_DEFINITION)
    assert not missing, f"customize operations without a guest test: {missing}"
    guest_dumps = [ast.dump(m) for m in _marked_modules("guest", "boot")]
    for op, (module, function, definition) in VIA_DEFINITION.items():
        tree = ast.parse((TESTS / module).read_text())
        assert ast.dump(tree) in guest_dumps, f"{module} is not guest-marked"
        fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
        assert Path(definition).name in _strings(fn), (op, function)
        assert f"- {op}:" in (TESTS.parent / definition).read_text(), (op, definition)


def test_every_customize_operation_has_a_bad_input_test() -> None:
    heads = _bad_input_heads("test_customize_unit.py", "test_bad_input_errors_before_the_appliance")
    missing = sorted(n for n in CUSTOMIZE if f"--{n}" not in heads and n not in CUSTOMIZE_NO_BAD_INPUT)
    assert not missing, f"customize operations without a bad-input test: {missing}"
    assert set(CUSTOMIZE_NO_BAD_INPUT) <= set(CUSTOMIZE), "stale exemption"
    assert all(CUSTOMIZE[n].metavar is None for n in CUSTOMIZE_NO_BAD_INPUT), "only flags may be exempt"


def _selected(item: str) -> set[str]:
    """What one ``--operations`` value selects (the operation-list syntax, applied from empty)."""
    chosen: set[str] = set()
    for word in item.split(","):
        names = (set(SYSPREP) if word.lstrip("-") == "all" else
                 {n for n, c in SYSPREP.items() if c.default} if word.lstrip("-") == "defaults" else
                 {word.lstrip("-")})
        chosen = chosen - names if word.startswith("-") else chosen | names
    return chosen


def test_every_sysprep_operation_has_a_guest_test() -> None:
    """test_sysprep_guest.py runs the defaults plus its ``LIST_*`` operation lists on real guests."""
    tree = ast.parse((TESTS / "test_sysprep_guest.py").read_text())
    lists = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id.startswith("LIST_") for t in n.targets)]
    assert lists, "test_sysprep_guest.py has no LIST_* operation lists"
    covered = _selected("defaults").union(*(_selected(item) for lst in lists for item in lst))
    missing = sorted(set(SYSPREP) - covered)
    assert not missing, f"sysprep operations without a guest test: {missing}"


def test_sysprep_operations_with_options_have_bad_input_tests() -> None:
    heads = _bad_input_heads("test_sysprep.py", "test_bad_input_one_line_exit_2_disk_untouched")
    missing = sorted(n for n, opt in SYSPREP_OPTIONS.items() if opt not in heads)
    assert not missing, f"sysprep operations whose options have no bad-input test: {missing}"
    assert "--operations" in heads and "--enable" in heads  # the name-only operations' one input
    assert set(SYSPREP_OPTIONS) <= set(SYSPREP), "stale entry"
