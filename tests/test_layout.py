"""The map in docs/LAYOUT.md, held to the code: imports only point down the layers, and no
module takes part in an import cycle (issue 20).

Every import counts, also one inside a function (a lazy import still ties the two modules
together); only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower layers first; a package may import its own modules and those of lower layers only.
LAYERS: dict[str, int] = {
    "shared": 0,
    "api": 1,
    "worker": 1,
    "devstack": 1,
    "migrations": 1,
    "training": 2,
    "cli": 3,
    "benchmarks": 4,
}
# Same layer, and still never imported from one another.
SIBLINGS_APART = {("api", "worker"), ("worker", "api"), ("api", "devstack"), ("worker", "devstack")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            files[_module_name(path)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py")
        # ``from shared import clinical`` names the module shared.clinical: keep the longest known name.
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _package_of(importer: str, target: str) -> tuple[str, str]:
    return importer.split(".")[0], target.split(".")[0]


def _is_init_reexport(importer: str, target: str) -> bool:
    """A package's ``__init__`` importing its own modules (and them importing the package's
    other modules) is one package, not a cycle between layers."""
    return target.startswith(importer + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph()


def test_no_module_takes_part_in_an_import_cycle(graph: dict[str, set[str]]) -> None:
    without_reexports = {m: {t for t in ts if not _is_init_reexport(m, t)} for m, ts in graph.items()}
    assert _cycles(without_reexports) == []


def test_imports_only_point_down_the_layers(graph: dict[str, set[str]]) -> None:
    upward = sorted(
        f"{importer} -> {target}"
        for importer, targets in graph.items()
        for target in targets
        for source, destination in [_package_of(importer, target)]
        if source != destination
        and (LAYERS[destination] > LAYERS[source] or (source, destination) in SIBLINGS_APART)
    )
    assert upward == []


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    """The two rules above would pass on an empty graph; here they are shown to bite."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    tree = ast.parse("from cli.main import main\nif TYPE_CHECKING:\n    import benchmarks.engine\n")
    assert _imports(tree, "shared.x", False) == {"cli.main", "cli.main.main"}


# Result and provenance fields (issue 20): read as typed attributes, not by string keys.
RESULT_FIELDS = (
    "diagnosis", "probability", "uncertainty", "tta_probabilities", "risk_band", "segmentation", "coverage",
    "concepts", "asymmetry", "border", "color", "diameter_px", "diameter_mm", "equity", "ita_degrees",
    "skin_group", "bias_warning", "quality", "blur_score", "uncertainty_level", "scribe_note", "result",
    "weights", "segmenter", "backend", "precision", "scalpel", "fusion", "operating_point", "threshold",
    "temperature", "banner", "training_data", "model", "disposition", "disposition_reasons",
    "safety_netting", "notice",
)
STRING_KEYED_READ = re.compile(r"""(?:\[\s*|\.get\(\s*)["']({})["']""".format("|".join(RESULT_FIELDS)))
# Each one left is justified where it stands (a SQL expression over the stored JSON, the JSON a
# worker hands to ``finish``, a key of the resumable training state, a FHIR element written).
MAX_STRING_KEYED_READS = 20


def test_result_fields_are_read_as_attributes_outside_the_tests() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in LAYERS
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if STRING_KEYED_READ.search(line)
    ]
    assert len(found) <= MAX_STRING_KEYED_READS, "\n".join(found)
