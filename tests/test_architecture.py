"""The package's layers (docs/architecture.md): every module imports only its own layer or the
layers below, and the import graph, function-level imports included, has no cycle."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lucir"
DOC = PACKAGE.parent / "docs" / "architecture.md"


def imports() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("__init__", "__main__"):
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                deps |= {n.split(".")[1] for n in names if n.startswith("lucir.")}
        graph[path.stem] = deps
    return graph


def layers() -> dict[str, int]:
    """{module: layer} from the table of docs/architecture.md."""
    out = {}
    for line in DOC.read_text().splitlines():
        row = re.match(r"\| (\d)\. [^|]+ \| ([^|]+) \|", line)
        if row:
            out |= {m: int(row[1]) for m in re.findall(r"`(\w+)`", row[2])}
    return out


def test_every_module_has_a_layer_and_imports_none_above_it():
    graph, layer = imports(), layers()
    assert set(graph) == set(layer), (sorted(set(graph) - set(layer)), sorted(set(layer) - set(graph)))
    upward = [(m, d) for m, deps in graph.items() for d in deps if layer[d] > layer[m]]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_the_import_graph_has_no_cycle():
    graph = imports()
    state: dict[str, str] = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
