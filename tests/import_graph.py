"""The project's import graph, read from the source (nothing is imported): which project
modules each module imports, at the top or inside a function, and which private names it
takes from another module. The layout tests and the DVC-deps test are built on it."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("grpo_core", "flows")
# "pkg.module:attr" strings that a registry resolves with importlib (engines, CLI commands)
_TARGET = re.compile(r"^((?:grpo_core|flows)(?:\.\w+)+):\w+$")


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # project modules, as imported
    targets: set[str] = field(default_factory=set)  # modules named in "module:attr" strings
    private: list[str] = field(default_factory=list)  # "line: from X import _y"
    settings: set[str] = field(default_factory=set)  # config keys read: "rollout.engine"
    inert: bool = False  # nothing but a docstring: cannot change what a stage computes


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(roots=PACKAGES) -> dict[str, Module]:
    files = [p for root in roots for p in sorted((REPO / root).rglob("*.py"))]
    modules = {module_name(p): Module(module_name(p), p) for p in files}
    for mod in modules.values():
        _read(mod, modules)
    return modules


def _read(mod: Module, modules: dict[str, Module]) -> None:
    tree = ast.parse(mod.path.read_text(encoding="utf-8"))
    mod.inert = all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                    for n in tree.body)
    mod.settings = settings_read(tree)
    package = mod.name if mod.path.name == "__init__.py" else mod.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mod.imports |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from pkg import module`
                    mod.imports.add(sub)
                elif base in modules:
                    mod.imports.add(base)
                    if alias.name.startswith("_") and base != mod.name:
                        mod.private.append(f"{node.lineno}: from {base} import {alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            hit = _TARGET.match(node.value)
            if hit and hit.group(1) in modules:
                mod.targets.add(hit.group(1))


SECTIONS = {"data", "validate_", "checkpoint", "rollout", "reward", "algorithm", "train",
            "evaluate", "tracking"}


def settings_read(tree: ast.AST) -> set[str]:
    """Config keys a module reads, as "section.key": `cfg.rollout.engine`, `run.cfg.reward.x`,
    and `r = cfg.rollout` followed by `r.engine` in the same function. A section passed on
    whole (`cfg.evaluate` with no key after it, or `.model_dump()`) counts as "section"."""
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    found: set[str] = set()
    for scope in [tree, *scopes]:
        found |= _reads_in(scope)
    return {key.replace("validate_", "validate") for key in found}


def _reads_in(scope: ast.AST) -> set[str]:
    aliases: dict[str, str] = {}  # local name -> section, e.g. {"r": "rollout"}
    owners = set()  # ids of nodes that are the object of a further attribute
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name) and _section_of(node.value):
            aliases[node.targets[0].id] = _section_of(node.value)
        if isinstance(node, ast.Attribute):
            owners.add(id(node.value))
    found = set()
    for node in ast.walk(scope):
        if not isinstance(node, ast.Attribute):
            continue
        section = _section_of(node.value)
        if section is None and isinstance(node.value, ast.Name) and node.value.id != "cfg":
            section = aliases.get(node.value.id)
        if section:
            found.add(section if node.attr.startswith("model_") else f"{section}.{node.attr}")
        elif _section_of(node) and id(node) not in owners:
            found.add(_section_of(node))
    return found


def _section_of(node: ast.AST) -> str | None:
    """`cfg.rollout` / `x.cfg.rollout` -> "rollout"."""
    if isinstance(node, ast.Attribute) and node.attr in SECTIONS:
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id == "cfg") or \
                (isinstance(owner, ast.Attribute) and owner.attr == "cfg"):
            return node.attr
    return None


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for dep in sorted(modules[name].imports):
            if dep not in index:
                visit(dep)
                low[name] = min(low[name], low[dep])
            elif dep in stack:
                low[name] = min(low[name], index[dep])
        if low[name] == index[name]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found


def closure(modules: dict[str, Module], entries: list[str], *,
            skip_targets_of: tuple[str, ...] = ()) -> set[str]:
    """Every project module that running `entries` can import: their imports, the packages
    that hold them, and the modules their registries name (except in `skip_targets_of`)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        mod = modules[name]
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        extra = set() if name in skip_targets_of else mod.targets
        todo += [m for m in (*mod.imports, *extra, *parents) if m in modules]
    return seen
