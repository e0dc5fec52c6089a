"""The import rules import-linter cannot state, checked on a package's source (`make lint` runs it).

    python tools/check_imports.py [PACKAGE_DIR ...]     (default: switchrepro)

It reports, one line each, and exits 1 if there is any:

  cycle       a strongly connected set of modules, counting every import in a file (module level or
              inside a function): an import hidden in a function is still a dependency, and a cycle means
              the layering is wrong (move the code; do not hide the import).
  lazy        an import inside a function, unless what it imports is on the allow-list: packages whose
              import is slow or has side effects (TensorFlow and what pulls it in, torch, the native library
              loader). The list is `lazy-imports-allowed` under [tool.check_imports] in pyproject.toml.
  private     a name with a leading underscore taken from another module of the package, by
              `from m import _x` or as `m._x` on an imported module: make it public or move it.

Package __init__ re-exports make parent <-> child edges that are not design cycles, so an import of a
package's own __init__ from inside that package is not counted as a dependency.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
# Used when pyproject.toml has no [tool.check_imports] (e.g. the test's tiny packages).
DEFAULT_LAZY_ALLOWED = ("tensorflow", "tensorflow_datasets", "seqio", "t5", "torch", "transformers")

Finding = Tuple[str, str]  # (kind, "path:line: message" or the cycle's modules)


def lazy_allowed(pyproject: Path = REPO / "pyproject.toml") -> Tuple[str, ...]:
    """Module prefixes an import inside a function may name (dotted: "switchrepro.native" covers its
    submodules)."""
    if not pyproject.is_file():
        return DEFAULT_LAZY_ALLOWED
    table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("check_imports", {})
    return tuple(table.get("lazy-imports-allowed", DEFAULT_LAZY_ALLOWED))


def package_modules(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py under the package directory root."""
    root = Path(root).resolve()
    mods = {}
    for f in sorted(root.rglob("*.py")):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _is_package(mods: Dict[str, Path], name: str) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def imported_names(cur: str, node: ast.AST, mods: Dict[str, Path]) -> List[Tuple[str, Optional[str]]]:
    """(absolute module, imported name or None) pairs of an import statement in module cur; relative
    imports are resolved against cur."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    base = node.module or ""
    if node.level:
        parts = cur.split(".") if _is_package(mods, cur) else cur.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [(base, a.name) for a in node.names]


def _owner(name: str, mods: Dict[str, Path]) -> Optional[str]:
    """The package module a dotted name lives in (itself, or its nearest enclosing module)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def dependencies(cur: str, node: ast.AST, mods: Dict[str, Path]) -> Set[str]:
    """The package's modules an import statement in cur depends on (`from p import m` counts p.m)."""
    out = set()
    for module, name in imported_names(cur, node, mods):
        for candidate in ([f"{module}.{name}"] if name else []) + [module]:
            owner = _owner(candidate, mods)
            if owner is not None and owner != cur:
                out.add(owner)
                break
    return {d for d in out if not cur.startswith(d + ".")}


def _walk_with_scope(tree: ast.AST) -> Iterator[Tuple[ast.AST, bool]]:
    """Every node with whether it sits inside a function (or lambda) body."""
    stack = [(tree, False)]
    while stack:
        node, inside = stack.pop()
        yield node, inside
        nested = inside or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, nested) for child in ast.iter_child_nodes(node))


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def check(root: Path, allowed: Iterable[str] = DEFAULT_LAZY_ALLOWED, relative_to: Optional[Path] = None
          ) -> List[Finding]:
    """Every finding in the package directory root; paths are shown relative to relative_to (default: the
    package's parent)."""
    mods = package_modules(root)
    base = Path(relative_to or Path(root).resolve().parent)
    allowed = tuple(allowed)
    is_allowed = lambda m: any(m == a or m.startswith(a + ".") for a in allowed)  # noqa: E731
    findings: List[Finding] = []
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for cur, path in mods.items():
        shown = path.relative_to(base) if path.is_relative_to(base) else path
        tree = ast.parse(path.read_text(), str(path))
        aliases: Dict[str, str] = {}  # local name -> package module it is bound to
        for node, inside in _walk_with_scope(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            graph[cur] |= dependencies(cur, node, mods)
            pairs = imported_names(cur, node, mods)
            if inside and not all(is_allowed(m if n is None else f"{m}.{n}") or is_allowed(m) for m, n in pairs):
                what = ", ".join(m if n is None else f"{m}.{n}" for m, n in pairs)
                findings.append(("lazy", f"{shown}:{node.lineno}: import inside a function: {what} (import it at "
                                         "module level; if that makes a cycle, move the code)"))
            for (module, name), alias in zip(pairs, node.names, strict=True):
                local = alias.asname or (name if name else module.split(".")[0])
                if name is None:
                    if alias.asname and module in mods:
                        aliases[local] = module
                    continue
                if f"{module}.{name}" in mods:
                    aliases[local] = f"{module}.{name}"
                elif (name.startswith("_") and not name.startswith("__") and _owner(module, mods) not in (None, cur)):
                    findings.append(("private", f"{shown}:{node.lineno}: private name {name} imported from {module} "
                                                "(make it public or move it)"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != cur):
                findings.append(("private", f"{shown}:{node.lineno}: private name {node.attr} used from "
                                            f"{aliases[node.value.id]} (make it public or move it)"))
    findings.sort(key=lambda f: (f[1].split(":")[0], int(f[1].split(":")[1])))
    findings += [("cycle", " ".join(c)) for c in cycles(graph)]
    return findings


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    roots = [Path(a) for a in argv] or [REPO / "switchrepro"]
    allowed = lazy_allowed()
    findings = []
    for root in roots:
        if not (root / "__init__.py").is_file():
            print(f"check_imports: {root} is not a package directory (no __init__.py); pass e.g. switchrepro")
            return 2
        findings += check(root, allowed, relative_to=Path.cwd() if root.resolve().is_relative_to(Path.cwd())
                          else None)
    for kind, text in findings:
        print(f"cycle: {text}" if kind == "cycle" else text)
    counts = {k: sum(f[0] == k for f in findings) for k in ("cycle", "lazy", "private")}
    print(f"check_imports: {counts['cycle']} cycle(s), {counts['lazy']} import(s) inside functions, "
          f"{counts['private']} private name(s) across modules")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
