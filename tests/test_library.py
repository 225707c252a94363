"""prefect_wandb is a library: the applications (the MNIST pipeline, the regressor example) use only its public
names, and it imports nothing of them, nor torch, torchvision or onnx, which a user of another framework lacks."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import prefect_wandb

REPO = Path(__file__).resolve().parents[1]
APPLICATIONS = ("flows", "tasks", "mnist_pipeline", "deployments", "examples", "benchmarks")
# a benchmark of the library's own internals (the store's write calls, below the stage API), not an application
LIBRARY_BENCHMARKS = ("benchmarks/store_bench.py",)
# The public namespaces and what each exports: the package's own `__all__`, the operator CLI, the file writers and
# the signing modules (each lists its public names in `__all__`).
PUBLIC_MODULES = ("prefect_wandb", "prefect_wandb.cli", "prefect_wandb.storage", "prefect_wandb.provenance",
                  "prefect_wandb.provenance.attest", "prefect_wandb.provenance.keys",
                  "prefect_wandb.provenance.statement", "prefect_wandb.provenance.verify")
FOREIGN = ("mnist_pipeline", "flows", "tasks", "deployments", "examples", "torch", "torchvision", "onnx",
           "onnxruntime", "onnxscript")


def _public() -> dict[str, set[str]]:
    return {m: set(importlib.import_module(m).__all__) for m in PUBLIC_MODULES}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def _private_uses(files) -> list[str]:
    public = _public()
    bad = []
    for f in files:
        for line, module, names in _imports(f):
            if module.split(".")[0] != "prefect_wandb":
                continue
            where = f"{f.relative_to(REPO)}:{line}"
            if module not in public:
                bad.append(f"{where}: {module}")
                continue
            # a name is public if the module exports it, or it is a public module itself (`from X import keys`)
            bad += [f"{where}: {module}.{n}" for n in names
                    if n not in public[module] and f"{module}.{n}" not in public]
    return bad


def _application_files() -> list[Path]:
    return sorted(p for top in APPLICATIONS for p in (REPO / top).rglob("*.py")
                  if str(p.relative_to(REPO)) not in LIBRARY_BENCHMARKS)


def test_the_applications_use_only_public_names_of_prefect_wandb():
    files = _application_files()
    assert len(files) > 50
    assert _private_uses(files) == []


def test_the_check_finds_a_private_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from prefect_wandb.store import LineageStore\nfrom prefect_wandb import open_stage, _WHERE\n"
                      "import prefect_wandb.stage\nfrom prefect_wandb.provenance import keys\n")
    sneaky = REPO / "tests" / sneaky.name
    try:
        sneaky.write_text((tmp_path / "sneaky.py").read_text())
        assert _private_uses([sneaky]) == ["tests/sneaky.py:1: prefect_wandb.store",
                                           "tests/sneaky.py:2: prefect_wandb._WHERE",
                                           "tests/sneaky.py:3: prefect_wandb.stage"]
    finally:
        sneaky.unlink()


def test_every_public_name_resolves_and_is_listed_once():
    assert sorted(prefect_wandb.__all__) == sorted(prefect_wandb._WHERE)
    for name in prefect_wandb.__all__:
        assert getattr(prefect_wandb, name) is not None, name
    with pytest.raises(AttributeError):
        prefect_wandb.no_such_name  # noqa: B018


def _library_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(prefect_wandb.__path__, "prefect_wandb.")
                  if ".migrations" not in m.name and not m.name.endswith("__main__"))


@pytest.mark.slow  # two fresh interpreters
def test_the_library_imports_nothing_of_the_applications_nor_torch_nor_onnx():
    for f in sorted((REPO / "prefect_wandb").rglob("*.py")):
        for line, module, _ in _imports(f):
            assert module.split(".")[0] not in FOREIGN, f"{f.relative_to(REPO)}:{line} imports {module}"
    # and at run time: every module of the library imported in a fresh interpreter pulls none of them in
    code = ("import importlib, sys\n"
            f"for m in {_library_modules()!r}: importlib.import_module(m)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FOREIGN)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_the_library_costs_nothing_until_a_name_is_used():
    code = ("import sys, prefect_wandb\n"
            "heavy = {m.split('.')[0] for m in sys.modules} & {'prefect', 'wandb', 'sqlalchemy', 'pydantic'}\n"
            "prefect_wandb.LineageSettings\n"
            "print(sorted(heavy), 'pydantic' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]", "True"], out.stderr


@pytest.mark.slow
def test_the_guide_s_flow_runs_as_documented(prefect_server, wandb_offline, tmp_path, monkeypatch):
    """docs/library.md's complete flow, run as it is: its three documented lines, and its records audit VERIFIED
    with the library's own command."""
    import re

    from prefect_wandb.cli import main

    doc = (REPO / "docs" / "library.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    printed = re.search(r"It prints .*?```\n(.*?)```", doc, re.S).group(1).splitlines()
    monkeypatch.chdir(tmp_path)
    guide: dict = {"__name__": "guide"}
    exec(compile(code, "docs/library.md", "exec"), guide)  # noqa: S102 - the guide's code, as a reader runs it
    flow = guide["line_pipeline"]
    assert [flow(), flow(), flow(shrink=0.2)] == printed
    assert main(["audit", "line:production", "--lineage-db", "runs/lineage.db"]) == 0
    assert main(["rollback", "--name", "line", "--to", "line:v1", "--dry-run", "--lineage-db", "runs/lineage.db"]) == 0


def test_the_library_names_no_model_of_its_users():
    """prefect_wandb is for any model: no MNIST, ConvNet or accuracy in its code, messages or templates (its
    migrations keep the names old stores have)."""
    import re

    word = re.compile(r"mnist|convnet|accuracy", re.I)
    found = [f"{p.relative_to(REPO)}:{n}" for p in sorted((REPO / "prefect_wandb").rglob("*"))
             if p.suffix in (".py", ".j2") and "migrations" not in p.parts
             for n, line in enumerate(p.read_text().splitlines(), 1) if word.search(line)]
    assert found == []


def _library_imports() -> dict[str, set[str]]:
    """Module -> the library modules it imports, at any depth of its code (a deferred import inside a function
    counts: it is still a dependency), but not under TYPE_CHECKING, and not a submodule's own package."""
    lib = REPO / "prefect_wandb"
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for p in lib.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.dump(node.test) for n in ast.walk(node)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefect_wandb"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("prefect_wandb")}
        graph[name] = {d for d in deps if d in files and d != name and not name.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_library_has_no_import_circles():
    graph = _library_imports()
    assert len(graph) > 40
    assert _cycles(graph) == []
    # the check finds one: records <-> refs, as it was before ArtifactRef moved into records
    assert _cycles({**graph, "prefect_wandb.records": graph["prefect_wandb.records"] | {"prefect_wandb.refs"}})


@pytest.mark.slow
def test_the_settings_are_kept_in_a_prefect_block(prefect_server, tmp_path):
    """Saved once by name on the real (test) Prefect server, loaded anywhere: the same settings, typed."""
    from prefect_wandb import LineageBlock, LineageSettings, WandbSettings

    settings = LineageSettings(store=tmp_path / "team.db", artifacts=tmp_path / "artifacts",
                               wandb=WandbSettings(project="team-lineage", entity="ml-team", mode="offline"),
                               command="team-pipeline")
    LineageBlock(settings=settings).save("team-lineage-test", overwrite=True)
    loaded = LineageBlock.load("team-lineage-test").settings
    assert loaded == settings and isinstance(loaded.wandb, WandbSettings)
    assert loaded.open_store().path == (tmp_path / "team.db").resolve()
