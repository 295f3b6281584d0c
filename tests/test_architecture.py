"""The package's layers (docs/architecture.md): every module imports only its own layer or the
layers below, and the import graph, function-level imports included, has no cycle. A module of
the figures package is named `figures.<name>`, its registry (`figures/__init__.py`) `figures`."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lucir"
DOC = PACKAGE.parent / "docs" / "architecture.md"


def _name(path: Path) -> str:
    """A module's name in the graph: `trainer`, `figures.main_curves`, `figures` (the registry)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str) -> str:
    """The graph's name of an imported `lucir` module: its top-level module, or `figures.<name>`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "figures" and len(parts) > 1 else parts[0]


def imports() -> dict[str, set[str]]:
    graph = {}
    for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("figures/*.py")]:
        if path.stem == "__main__" or path == PACKAGE / "__init__.py":
            continue
        me = _name(path)
        package = me.split(".")[:-1] if path.parent != PACKAGE else []  # where `from . import` looks
        if path.stem == "__init__":
            package = me.split(".")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                if node.module:
                    deps.add(_target(".".join([*base, node.module])))
                else:
                    deps |= {_target(".".join([*base, a.name])) for a in node.names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                deps |= {_target(n.split(".", 1)[1]) for n in names if n.startswith("lucir.")}
        graph[me] = deps - {me}
    # the registry imports every figure module by name (importlib), which ast does not see
    graph["figures"] |= {m for m in graph if m.startswith("figures.")}
    return graph


def layers() -> dict[str, int]:
    """{module: layer} from the table of docs/architecture.md."""
    out = {}
    for line in DOC.read_text().splitlines():
        row = re.match(r"\| (\d)\. [^|]+ \| ([^|]+) \|", line)
        if row:
            out |= {m: int(row[1]) for m in re.findall(r"`([\w.]+)`", row[2])}
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
