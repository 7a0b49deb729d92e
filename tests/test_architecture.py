"""The architecture, checked on the source text: every .py file under the packages is parsed with `ast`
(nothing is imported or run) and the module import graph is built from its import statements.

Rules:
  (a) layering: codec <- protocol <- sender, receiver <- bench. codec imports none of the others,
      protocol only codec, sender and receiver only codec and protocol (never each other), bench any.
      Inside codec, the core (everything but codec/apps/ and codec/cli.py) does not import codec.apps:
      the applications sit on the core, and the `vsae` command line on both.
  (b) no import cycles among modules. Both module-level imports and imports inside functions ("lazy"
      imports) count: a lazy import only postpones a cycle to the first call, so both graphs must be
      acyclic. Not in the graph: the implicit import of a parent package (importing codec.bundle runs
      codec/__init__.py first) and the `vsae.commands` entry-point plug-ins that codec/cli.py loads
      through importlib.metadata, which are the designed way up the layers.
  (c) no module imports a `_private` name (leading underscore, not a dunder) from a module of another
      package, neither `from X import _name` nor `X._name` on an imported module. A subpackage
      (codec.apps) is a package of its own here.
  (d) every package's __init__.py opens with a docstring that is not the placeholder
      "filled by a later issue".

`python tests/test_architecture.py [ROOT]` prints the package import graph, the modules that import
across packages, any rule violations and the line counts per package for the tree at ROOT (default:
this checkout), e.g. for an older commit checked out with `git worktree add`.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("codec", "protocol", "sender", "receiver", "bench")
# The top-level packages each package may import besides itself.
ALLOWED = {
    "codec": set(),
    "protocol": {"codec"},
    "sender": {"codec", "protocol"},
    "receiver": {"codec", "protocol"},
    "bench": {"codec", "protocol", "sender", "receiver"},
}
# Inside codec: the subpackage of applications, and the modules allowed to import it.
APPS = "codec.apps"
APPS_USERS = {"codec.cli"}
STALE_DOCSTRING = "filled by a later issue"


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. "sender.cli"
    target: str  # the module imported (one of ours)
    names: tuple[str, ...]  # names taken from it by `from target import ...` (empty for `import target`)
    line: int
    lazy: bool  # inside a function body


@dataclass
class Tree:
    modules: dict[str, Path]  # module name -> file
    packages: set[str]  # module names that are packages (an __init__.py)
    imports: list[Import]
    private_attrs: list[tuple[str, str, str, int]]  # (importer, module, attribute, line): `module._name`


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str, packages: set[str]) -> str:
    """The package a module belongs to: itself for a package, else its parent (codec.apps.cli -> codec.apps)."""
    return module if module in packages else module.rpartition(".")[0]


def top(module: str) -> str:
    return module.split(".")[0]


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str, tree: Tree):
        self.module, self.tree, self.depth = module, tree, 0
        self.is_package = module in tree.packages
        self.bound: dict[str, str] = {}  # local name -> one of our modules, for `name._attr`

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _add(self, target: str, names: tuple[str, ...], line: int) -> None:
        self.tree.imports.append(Import(self.module, target, names, line, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = _ours(alias.name, self.tree.modules)
            if target is None:
                continue
            self._add(target, (), node.lineno)
            if alias.asname:
                self.bound[alias.asname] = target
            elif target == alias.name.split(".")[0]:
                self.bound[target] = target

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.module.split(".")
            if not self.is_package:
                base_parts = base_parts[:-1]
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if _ours(base, self.tree.modules) is None:
            return
        from_base: list[str] = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.tree.modules:  # `from codec import bundle`: the submodule itself
                self._add(sub, (), node.lineno)
                self.bound[alias.asname or alias.name] = sub
            else:
                from_base.append(alias.name)
        if from_base:
            self._add(_ours(base, self.tree.modules), tuple(from_base), node.lineno)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.bound and _private(node.attr):
            self.tree.private_attrs.append((self.module, self.bound[node.value.id], node.attr, node.lineno))
        self.generic_visit(node)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def scan(root: Path = ROOT) -> Tree:
    files = sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))
    modules = {module_name(root, p): p for p in files}
    packages = {module_name(root, p) for p in files if p.name == "__init__.py"}
    tree = Tree(modules, packages, [], [])
    for name, path in modules.items():
        _Visitor(name, tree).visit(ast.parse(path.read_text(), str(path)))
    return tree


# -- rules ------------------------------------------------------------------------------------------
def _in_apps(module: str) -> bool:
    return module == APPS or module.startswith(APPS + ".")


def layering_violations(tree: Tree) -> list[str]:
    bad = []
    for imp in tree.imports:
        a, b = top(imp.importer), top(imp.target)
        if a != b and b not in ALLOWED[a]:
            bad.append(f"{imp.importer}:{imp.line} imports {imp.target} ({a} may not import {b})")
        if a == b == "codec" and _in_apps(imp.target) and not _in_apps(imp.importer) and imp.importer not in APPS_USERS:
            bad.append(f"{imp.importer}:{imp.line} imports {imp.target} (the codec core may not import {APPS})")
    return bad


def cycles(tree: Tree, include_lazy: bool) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in tree.imports:
        if include_lazy or not imp.lazy:
            graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm; the graph has ~60 nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(tree.modules):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def private_imports(tree: Tree) -> list[str]:
    bad = []
    for imp in tree.imports:
        if package_of(imp.importer, tree.packages) == package_of(imp.target, tree.packages):
            continue
        for name in imp.names:
            if _private(name):
                bad.append(f"{imp.importer}:{imp.line} imports {imp.target}.{name}")
    for importer, module, attr, line in tree.private_attrs:
        if package_of(importer, tree.packages) != package_of(module, tree.packages):
            bad.append(f"{importer}:{line} uses {module}.{attr}")
    return bad


def docstring_problems(tree: Tree) -> list[str]:
    bad = []
    for name in sorted(tree.packages):
        doc = ast.get_docstring(ast.parse(tree.modules[name].read_text()))
        if not doc or not doc.strip():
            bad.append(f"{name}: __init__.py has no docstring")
        elif STALE_DOCSTRING in doc:
            bad.append(f"{name}: __init__.py docstring is a placeholder: {doc.splitlines()[0]!r}")
    return bad


# -- the tests --------------------------------------------------------------------------------------
TREE = scan()


def test_the_scan_sees_every_package_and_their_imports():
    assert {top(m) for m in TREE.modules} == set(PACKAGES)
    assert TREE.packages >= set(PACKAGES)
    # The scan must see the imports it judges, else every rule below passes vacuously.
    assert any(top(i.importer) == "bench" and top(i.target) == "receiver" for i in TREE.imports)
    assert any(i.lazy for i in TREE.imports)


def test_packages_are_layered():
    assert layering_violations(TREE) == []


def test_no_import_cycles_at_module_level():
    assert cycles(TREE, include_lazy=False) == []


def test_no_import_cycles_counting_imports_inside_functions():
    assert cycles(TREE, include_lazy=True) == []


def test_no_private_names_imported_across_packages():
    assert private_imports(TREE) == []


def test_every_package_docstring_says_what_it_holds():
    assert docstring_problems(TREE) == []


def test_every_package_is_installed():
    """pyproject's explicit package list names every package folder (a subpackage left out would be
    missing from an installed, non-editable vsae)."""
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted(TREE.packages)


def test_the_rules_catch_what_they_are_meant_to(tmp_path):
    """A small tree with one of each fault: every rule must report it."""
    files = {
        "codec/__init__.py": '"""codec: filled by a later issue (see README)."""\n',
        "codec/cli.py": '"""x"""\nfrom ._args import _positive\n\ndef main():\n    from . import edit\n',
        "codec/_args.py": "_positive = int\n",
        "codec/edit.py": "from .cli import _positive\nfrom codec.apps import tools\n",
        "codec/apps/__init__.py": '"""codec.apps: applications."""\n',
        "codec/apps/tools.py": "from ..cli import _positive\n",
        "protocol/__init__.py": '"""protocol."""\n',
        "sender/__init__.py": '"""sender."""\nimport receiver.demo as demo\nx = demo._vsae\n',
        "receiver/__init__.py": '"""receiver."""\n',
        "receiver/demo.py": "from sender import session\n",
        "sender/session.py": "",
        "bench/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    tree = scan(tmp_path)
    assert sorted(layering_violations(tree)) == [
        "codec.edit:2 imports codec.apps.tools (the codec core may not import codec.apps)",
        "receiver.demo:1 imports sender.session (receiver may not import sender)",
        "sender:2 imports receiver.demo (sender may not import receiver)",
    ]
    assert cycles(tree, include_lazy=False) == []
    assert cycles(tree, include_lazy=True) == [["codec.apps.tools", "codec.cli", "codec.edit"]]
    assert sorted(private_imports(tree)) == [
        "codec.apps.tools:1 imports codec.cli._positive",
        "sender:3 uses receiver.demo._vsae",
    ]
    assert docstring_problems(tree) == [
        "bench: __init__.py has no docstring",
        "codec: __init__.py docstring is a placeholder: 'codec: filled by a later issue (see README).'",
    ]


# -- the report -------------------------------------------------------------------------------------
def report(root: Path = ROOT) -> str:
    tree = scan(root)
    pkg = lambda m: package_of(m, tree.packages)  # noqa: E731
    out: list[str] = [f"tree: {root}", "", "package imports (module-level / inside functions), one line per pair:"]
    pairs: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for imp in tree.imports:
        if pkg(imp.importer) != pkg(imp.target):
            pairs[pkg(imp.importer), pkg(imp.target)][imp.lazy] += 1
    for (a, b), (eager, lazy) in sorted(pairs.items()):
        out.append(f"  {a:10s} -> {b:10s} {eager:3d} / {lazy}")
    out += ["", "modules importing from other packages (* = inside a function only):"]
    across: dict[str, dict[str, bool]] = defaultdict(dict)
    for imp in tree.imports:
        if pkg(imp.importer) != pkg(imp.target):
            lazy_only = across[imp.importer].get(imp.target, True) and imp.lazy
            across[imp.importer][imp.target] = lazy_only
    for module in sorted(across):
        targets = ", ".join(t + ("*" if lazy else "") for t, lazy in sorted(across[module].items()))
        out.append(f"  {module}: {targets}")
    out += ["", "rule violations:"]
    problems = {
        "layering": layering_violations(tree),
        "cycles (module level)": [" <-> ".join(c) for c in cycles(tree, include_lazy=False)],
        "cycles (counting imports inside functions)": [" <-> ".join(c) for c in cycles(tree, include_lazy=True)],
        "private names across packages": private_imports(tree),
        "package docstrings": docstring_problems(tree),
    }
    for rule, items in problems.items():
        out.append(f"  {rule}: {len(items) or 'none'}")
        out += [f"    {item}" for item in items]
    out += ["", "lines per package (.py files directly in it):", f"  {'package':12s} {'files':>5s} {'lines':>6s}"]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, path in tree.modules.items():
        counts[pkg(name)][0] += 1
        counts[pkg(name)][1] += len(path.read_text().splitlines())
    for name, (n, lines) in sorted(counts.items()):
        out.append(f"  {name:12s} {n:5d} {lines:6d}")
    out.append(f"  {'total':12s} {sum(c[0] for c in counts.values()):5d} {sum(c[1] for c in counts.values()):6d}")
    return "\n".join(out)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT))
