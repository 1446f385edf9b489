"""docs/CLINICAL_RULES.md stays true: every value it states is the code's, every public name of
shared.clinical is listed with the module it lives in, and nothing listed is gone."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from shared import clinical

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "CLINICAL_RULES.md").read_text()
MODULES = ("rules", "wording", "vocabulary")

# | `NAME` | `value` | `module` | rule |
CONSTANT_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| `(.+?)` \| `(\w+)` \|", re.MULTILINE)
# ### `NAME` (`module`) ... ```python <literal> ```
WORDING_BLOCK = re.compile(r"^### `([A-Z][A-Z0-9_]*)` \(`(\w+)`\)\n.*?```python\n(.*?)\n```", re.MULTILINE | re.DOTALL)
# | `name(...)` | `module` | what it decides |
FUNCTION_ROW = re.compile(r"^\| `([A-Za-z_]\w*)\(.*?\)` \| `(\w+)` \|", re.MULTILINE)


def documented() -> dict[str, tuple[str, str | None]]:
    """Name -> (module, the value as written, or None for a function or class)."""
    found: dict[str, tuple[str, str | None]] = {}
    for pattern in (CONSTANT_ROW, WORDING_BLOCK):
        for name, *rest in pattern.findall(DOC):
            value, module = (rest[0], rest[1]) if pattern is CONSTANT_ROW else (rest[1], rest[0])
            assert name not in found, f"{name} is documented twice"
            found[name] = (module, value)
    for name, module in FUNCTION_ROW.findall(DOC):
        assert name not in found, f"{name} is documented twice"
        found[name] = (module, None)
    return found


def defined_in(module: str) -> set[str]:
    """The public names a module defines itself (not those it imports)."""
    tree = ast.parse(Path(importlib.import_module(f"shared.clinical.{module}").__file__).read_text())
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
    assert {module for module, _ in DOCUMENTED.values()} == set(MODULES)
    assert len(DOCUMENTED) > 80


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_is_documented_where_it_lives(module):
    for name in defined_in(module):
        assert name in DOCUMENTED, f"shared.clinical.{module}.{name} is not in docs/CLINICAL_RULES.md"
        assert DOCUMENTED[name][0] == module, f"the doc says {name} lives in {DOCUMENTED[name][0]}, not {module}"


def test_everything_documented_exists_and_is_re_exported():
    for name, (module, _) in DOCUMENTED.items():
        assert name in defined_in(module), f"docs/CLINICAL_RULES.md lists {module}.{name}, which is gone"
        assert name in clinical.__all__ and getattr(clinical, name) is getattr(
            importlib.import_module(f"shared.clinical.{module}"), name
        ), f"clinical.{name} is not re-exported"
    assert set(clinical.__all__) == set(DOCUMENTED), "shared.clinical exports names the doc does not list"


@pytest.mark.parametrize("name", sorted(n for n, (_, value) in DOCUMENTED.items() if value is not None))
def test_every_documented_value_is_the_codes(name):
    value, actual = ast.literal_eval(DOCUMENTED[name][1]), getattr(clinical, name)
    assert value == actual, f"docs/CLINICAL_RULES.md says {name} = {value!r}; the code has {actual!r}"


def test_the_gates_defaults_are_the_clinical_ones():
    from shared.config import Settings
    from worker.pipeline.pipeline import PipelineOptions

    settings = Settings(_env_file=None)
    assert settings.blur_threshold == PipelineOptions().blur_threshold == clinical.BLUR_THRESHOLD
    assert settings.min_coverage == PipelineOptions().min_coverage == clinical.MIN_COVERAGE
