"""The structure the code keeps (``docs/architecture.md``), checked on the source with ``ast``:
the layers import only downwards, and no module outside a stage names a stage kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stages

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("pipeline", "stages", "rewards", "data")
# The front end: the executor, the command line and the reports. Everything else in pipeline/
# is the core that stages build on.
FRONT = (
    "pipeline.runner",
    "pipeline.cli",
    "pipeline.report",
    "pipeline.inspect",
    "pipeline.summary",
    "pipeline.slurm",
    "pipeline.doctor",
    "pipeline.status",
)


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in PROJECT}


def _is(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.startswith(t + ".") for t in targets)


def _violations(folder: str, allowed) -> list[str]:
    return [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _files(folder)
        for name in sorted(imports(path))
        if not allowed(_module(path), name)
    ]


def test_the_scanner_sees_imports_inside_functions(tmp_path):
    file = tmp_path / "m.py"
    file.write_text(
        "import os\nfrom data.sft import SFT_COLUMNS\ndef f():\n    from stages import eval\n    import pipeline.cli\n"
    )
    assert imports(file) == {"data.sft", "data.sft.SFT_COLUMNS", "stages", "stages.eval", "pipeline.cli"}


@pytest.mark.parametrize("package", ["data", "rewards"])
def test_data_and_rewards_import_nothing_else_of_the_project(package):
    assert _violations(package, lambda module, name: name.split(".")[0] == package) == []


def test_stages_never_import_the_front():
    assert _violations("stages", lambda module, name: not _is(name, FRONT)) == []


def test_the_core_of_pipeline_never_imports_stages_or_the_front():
    def allowed(module: str, name: str) -> bool:
        return _is(module, FRONT) or not _is(name, ("stages", *FRONT))

    assert _violations("pipeline", allowed) == []


def _reward_names(tree: ast.AST) -> set[int]:
    """The ``id`` of each string constant that names a reward in ``@register("<name>")``: a
    reward's name, not a stage kind's, even when the two are spelled alike (the ``reward_model``
    reward scores with what the ``reward_model`` stage trains)."""
    return {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "register"
    }


def test_no_kind_name_outside_its_stage_module():
    """The front asks the stage contract (pipeline.stage), never ``kind == "grpo"``: a string
    constant equal to a stage kind's name is allowed only in ``stages/<kind>.py`` (and as a
    reward's registered name, :func:`_reward_names`)."""
    kinds = set(stages.kinds())
    assert {"eval", "generate", "grpo", "sft", "distill", "reward_model"} <= kinds  # the names this test guards
    found = []
    for folder in ("pipeline", "stages/common", "data", "rewards"):
        for path in _files(folder):
            tree = ast.parse(path.read_text(), str(path))
            allowed = _reward_names(tree) if folder == "rewards" else set()
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value in kinds
                    and id(node) not in allowed
                ):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert found == []


def test_a_reward_registered_under_a_kind_name_is_the_only_exception():
    source = 'from rewards.registry import register\n@register("reward_model")\nclass R: ...\nNAME = "reward_model"\n'
    tree = ast.parse(source)
    flagged = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value == "reward_model" and id(n) not in _reward_names(tree)
    ]
    assert flagged == [4]  # the registration is a reward's name; the module-level constant is a kind name


def test_kinds_are_the_modules_of_stages_not_its_packages():
    assert (REPO / "stages" / "common" / "__init__.py").is_file()
    assert "common" not in stages.kinds()
    assert stages.kinds() == sorted(p.stem for p in (REPO / "stages").glob("*.py") if not p.stem.startswith("_"))


# A module longer than this says why it is one file: a paragraph of its docstring that starts
# with "Why one file:" (docs/architecture.md).
MAX_LINES = 450
WHY = "Why one file:"


def oversized(path: Path, max_lines: int = MAX_LINES) -> str | None:
    """Why ``path`` breaks the size rule (None when it keeps it): over ``max_lines`` lines and no
    docstring paragraph starting with :data:`WHY` that says something after it."""
    text = path.read_text()
    lines = len(text.splitlines())
    if lines <= max_lines:
        return None
    doc = ast.get_docstring(ast.parse(text, str(path))) or ""
    reasons = [p.strip()[len(WHY) :].strip() for p in doc.split("\n\n") if p.strip().startswith(WHY)]
    if any(len(r) >= 40 for r in reasons):
        return None
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {lines} lines, no '{WHY}' paragraph"


def test_the_size_rule_reads_the_docstring(tmp_path):
    body = "x = 1\n" * 10
    plain = tmp_path / "plain.py"
    plain.write_text('"""A module."""\n' + body)
    assert oversized(plain, max_lines=20) is None  # short enough
    assert oversized(plain, max_lines=5) == f"{plain}: 11 lines, no '{WHY}' paragraph"
    empty = tmp_path / "empty.py"
    empty.write_text(f'"""A module.\n\n{WHY} because.\n"""\n' + body)
    assert oversized(empty, max_lines=5) is not None  # a reason of one word says nothing
    justified = tmp_path / "justified.py"
    justified.write_text(
        f'"""A module.\n\n{WHY} its parts share one protocol, split it and both ends drift.\n"""\n' + body
    )
    assert oversized(justified, max_lines=5) is None
    buried = tmp_path / "buried.py"  # mid-paragraph does not count: the reason must stand on its own
    buried.write_text(f'"""A module. {WHY} its parts share one protocol, split it and both ends drift.\n"""\n' + body)
    assert oversized(buried, max_lines=5) is not None


def test_no_module_over_the_size_limit_without_saying_why():
    paths = [p for package in PROJECT for p in _files(package)]
    assert len(paths) > 50  # the scan sees the packages
    assert [reason for p in paths if (reason := oversized(p))] == []
