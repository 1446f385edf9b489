"""docs/CLINICAL_RULES.md stays true: every value it states is the code's, every public name of
shared.clinical (and of its disposition module) is listed with the module it lives in, and
nothing listed is gone."""

from __future__ import annotations

import ast
import importlib
import re
import typing
from pathlib import Path

import pytest

from shared import clinical
from shared.clinical import disposition

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "CLINICAL_RULES.md").read_text()
# Re-exported name by name by shared/clinical/__init__.py.
RE_EXPORTED = ("rules", "wording", "vocabulary")
# Read as a module (``from shared.clinical import disposition``): its ``review_reasons`` is not rules'.
# ``shapes`` holds the structural types the rules read (they name no schema type).
MODULES = (*RE_EXPORTED, "disposition", "shapes")

# | `NAME` | `value` | `module` | rule |
CONSTANT_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| `(.+?)` \| `(\w+)` \|", re.MULTILINE)
# ### `NAME` (`module`) ... ```python <literal> ```
WORDING_BLOCK = re.compile(r"^### `([A-Z][A-Z0-9_]*)` \(`(\w+)`\)\n.*?```python\n(.*?)\n```", re.MULTILINE | re.DOTALL)
# | `name(...)` | `module` | what it decides |
FUNCTION_ROW = re.compile(r"^\| `([A-Za-z_]\w*)\(.*?\)` \| `(\w+)` \|", re.MULTILINE)
# | type `Name` | `module` | what it is |
TYPE_ROW = re.compile(r"^\| type `([A-Z]\w*)` \| `(\w+)` \|", re.MULTILINE)


def documented() -> dict[tuple[str, str], str | None]:
    """(module, name) -> the value as written, or None for a function, class or type."""
    found: dict[tuple[str, str], str | None] = {}

    def add(module: str, name: str, value: str | None) -> None:
        assert (module, name) not in found, f"{module}.{name} is documented twice"
        found[module, name] = value

    for name, value, module in CONSTANT_ROW.findall(DOC):
        add(module, name, value)
    for name, module, value in WORDING_BLOCK.findall(DOC):
        add(module, name, value)
    for pattern in (FUNCTION_ROW, TYPE_ROW):
        for name, module in pattern.findall(DOC):
            add(module, name, None)
    return found


def module_of(module: str):
    return importlib.import_module(f"shared.clinical.{module}")


def defined_in(module: str) -> set[str]:
    """The public names a module defines itself (not those it imports)."""
    tree = ast.parse(Path(module_of(module).__file__).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return {name for name in names if not name.startswith("_")}


DOCUMENTED = documented()


def test_the_doc_lists_something_of_every_module():
    assert {module for module, _ in DOCUMENTED} == set(MODULES)
    assert len(DOCUMENTED) > 120


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_is_documented_where_it_lives(module):
    for name in defined_in(module):
        elsewhere = sorted(m for m, n in DOCUMENTED if n == name and m != module)
        assert (module, name) in DOCUMENTED, (
            f"shared.clinical.{module}.{name} is not in docs/CLINICAL_RULES.md"
            + (f" (the doc says it lives in {', '.join(elsewhere)})" if elsewhere else "")
        )


def test_everything_documented_exists_and_is_re_exported():
    for module, name in DOCUMENTED:
        assert name in defined_in(module), f"docs/CLINICAL_RULES.md lists {module}.{name}, which is gone"
        if module in RE_EXPORTED:
            assert name in clinical.__all__ and getattr(clinical, name) is getattr(module_of(module), name), (
                f"clinical.{name} is not re-exported"
            )
    re_exported = {name for module, name in DOCUMENTED if module in RE_EXPORTED}
    assert set(clinical.__all__) == re_exported, "shared.clinical exports names the doc does not list"


@pytest.mark.parametrize(
    ("module", "name"),
    [pytest.param(*key, id=".".join(key)) for key, value in sorted(DOCUMENTED.items()) if value is not None],
)
def test_every_documented_value_is_the_codes(module, name):
    value, actual = ast.literal_eval(DOCUMENTED[module, name]), getattr(module_of(module), name)
    assert value == actual, f"docs/CLINICAL_RULES.md says {module}.{name} = {value!r}; the code has {actual!r}"


def test_the_disposition_type_is_the_list_of_dispositions():
    assert typing.get_args(disposition.Disposition) == disposition.DISPOSITIONS
    assert "type `Disposition`" in DOC and "`Literal['urgent_referral', 'clinician_review', 'routine']`" in DOC


def test_every_reason_code_has_its_sentence_and_a_row():
    codes = {value for name, value in vars(disposition).items() if name.startswith("REASON_") and name != "REASON_TEXT"}
    assert codes == set(disposition.REASON_TEXT)
    assert set(disposition.REVIEW_REASON_CODES) <= codes
    for code in codes:
        assert f"| `'{code}'` | `disposition` |" in DOC, f"reason {code} has no row with its rule"


def test_the_gates_defaults_are_the_clinical_ones():
    from shared.config import Settings
    from worker.pipeline.pipeline import PipelineOptions

    settings = Settings(_env_file=None)
    assert settings.blur_threshold == PipelineOptions().blur_threshold == clinical.BLUR_THRESHOLD
    assert settings.min_coverage == PipelineOptions().min_coverage == clinical.MIN_COVERAGE
