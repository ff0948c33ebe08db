"""The map of the house, checked over the AST (DESIGN.md, "Floor plan" and "Walls").

Every import counts, wherever it stands: the import graph of ``common/`` has no cycle and stands on
at most ``MAX_LEVELS`` levels (a module stands one level above the highest module it imports);
no function imports another ``common/`` module (a hidden import is a hidden arrow); each stage's
folder imports only the folders ``WALLS`` allows; models are torch only; no module is both a dataset
and a model; functions stay short and take few parameters; modules stay short.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "common"
MAX_LEVELS = 9           # levels of the import graph of common/
MAX_FUNCTION_LINES = 60  # every function of common/, decorators and docstring included
MAX_S5_MAIN_LINES = 40   # S5_predict.main wires and writes
MAX_S5_FUNCTION_LINES = 40  # and every other function of S5_predict.py
MAX_PARAMS = 8           # parameters of a common/ function (self / cls not counted; *args, **kw count one)
MAX_MODULE_LINES = 450   # lines of a common/ module
# deliberate exceptions to MAX_FUNCTION_LINES, with the reason
LONG_FUNCTIONS: dict[str, str] = {}
# deliberate exceptions to MAX_MODULE_LINES, with the reason
LONG_MODULES = {"common.segmentation.hpa.weights": "the restricted unpickler of the official .pth files: "
                "its allow-list of globals and its opcode handling read best in one place"}
# the folders of common/ ("base": the modules directly in common/) and the folders each may import
WALLS = {
    "base": {"segmentation"},              # fov hands fields to the segmenters
    "segmentation": {"base"},
    "competition": {"base"},
    "data": {"base"},
    "models": {"base"},
    "demo": {"base", "competition"},
    "report": {"base", "competition"},
    "training": {"base", "competition", "data", "models"},
    "predict": {"base", "competition", "data", "models", "report", "segmentation"},
}
MODELS = ("common.models.models", "common.models.mil", "common.models.cellpool")  # torch only
DATASETS = ("common.data.datasets", "common.data.bag_datasets")
FILE_READERS = ("common.io", "common.images", "common.fov", "common.data.download",
                "common.competition.encoding", "common.competition.metric", "common.data.crop_files",
                "common.models.weights_fetch", "common.training.checkpoint_saver",
                "common.training.run_folder", "common.demo.demo_data")
# no file I/O of their own: the cell geometry (S4.1's crop files are crop_files'), the run-time weights
# lookup (the fetcher and its manifest are weights_fetch's), the demo's labels and renderer (its files
# are demo_data's)
NO_FILE_IO = ("common.cells", "common.models.weights", "common.demo.demo_labels", "common.demo.demo_field",
              "common.demo.demo_render")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(COMMON.rglob("*.py"))}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(node: ast.AST, here: str) -> set[str]:
    """The common/ modules one import statement names (``from common import a, b`` names a and b)."""
    mods = _modules()
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = here.split(".")
            if not (COMMON / Path(*here.split(".")[1:]) / "__init__.py").is_file():
                pkg = pkg[:-1]
            pkg = pkg[: len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
        names = subs or [base]  # ``from common import io`` names common.io, not the package
    out = set()
    for n in names:
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n and n != here:
            out.add(n)
    return out


@cache
def _graph() -> dict[str, frozenset[str]]:
    return {m: frozenset(set().union(*[_imported(n, m) for n in ast.walk(_tree(p))
                                       if isinstance(n, (ast.Import, ast.ImportFrom))]))
            for m, p in _modules().items()}


def _levels() -> dict[str, int]:
    graph, level = _graph(), {}

    def visit(m: str, path: tuple[str, ...]) -> int:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join((*path[path.index(m):], m)))
        if m not in level:
            level[m] = 1 + max((visit(d, (*path, m)) for d in graph[m] if d != m), default=0)
        return level[m]

    for m in graph:
        visit(m, ())
    return level


def _functions(tree: ast.AST, prefix: str):
    """(qualified name, node) of every function, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{node.name}", node
            yield from _functions(node, f"{prefix}.{node.name}")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}.{node.name}")


def _lines(node: ast.AST) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return node.end_lineno - first + 1


# ----------------------------------------------------------------------------- the import graph
def test_the_import_graph_has_no_cycle_and_few_levels():
    level = _levels()
    top = max(level, key=level.get)
    chain = [top]
    while _graph()[chain[-1]]:
        chain.append(max(_graph()[chain[-1]], key=level.get))
    assert level[top] <= MAX_LEVELS, f"{level[top]} levels: " + " -> ".join(chain)


def test_no_function_imports_another_common_module():
    hidden = []
    for m, p in _modules().items():
        for name, fn in _functions(_tree(p), m):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _imported(node, m):
                    hidden.append(f"{name} (line {node.lineno}) imports {sorted(_imported(node, m))}")
    assert not hidden, "function-level imports between common/ modules:\n" + "\n".join(sorted(set(hidden)))


# ----------------------------------------------------------------------------- walls
def test_models_are_torch_only():
    graph = _graph()
    for m in MODELS:
        bad = sorted(graph[m] & set(DATASETS + FILE_READERS + ("common.predict.predict",)))
        assert not bad, f"{m} imports {bad}: a model module imports no dataset, reader or predict"


def test_geometry_and_runtime_weights_import_no_file_io():
    graph = _graph()
    for m in NO_FILE_IO:
        bad = sorted(graph[m] & set(FILE_READERS + ("common.parallel",)))
        assert not bad, f"{m} imports {bad}: it does no file I/O of its own"


def _folder(m: str) -> str:
    """The folder of common/ a module lives in ("base": common/ itself)."""
    parts = m.split(".")
    return parts[1] if len(parts) > 1 and (COMMON / parts[1]).is_dir() else "base"


def test_each_folder_imports_only_what_its_walls_allow():
    assert set(WALLS) == {_folder(m) for m in _modules()}, "WALLS names every folder of common/, no other"
    crossings = sorted(f"{m} imports {d} ({_folder(m)}/ may not import {_folder(d)}/)"
                       for m, deps in _graph().items() for d in deps
                       if _folder(d) != _folder(m) and _folder(d) not in WALLS[_folder(m)])
    assert not crossings, "\n".join(crossings)


def test_common_never_imports_predict_or_a_script():
    for m, deps in _graph().items():
        assert m == "common.predict.predict" or "common.predict.predict" not in deps, \
            f"{m} imports common.predict.predict"
    for m, p in _modules().items():
        for node in ast.walk(_tree(p)):
            scripts = tuple(f"S{k}" for k in range(7))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(scripts):
                pytest.fail(f"{m} imports the script {node.module}")


def test_only_distributed_touches_torch_distributed():
    for m, p in _modules().items():
        for node in ast.walk(_tree(p)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.startswith("torch.distributed") for n in names):
                assert m == "common.training.distributed", f"{m} imports torch.distributed"


def _bases(cls: ast.ClassDef) -> set[str]:
    return {ast.unparse(b).rpartition(".")[2] for b in cls.bases}


def test_no_module_is_both_a_dataset_and_a_model():
    for m, p in _modules().items():
        classes = [n for n in ast.walk(_tree(p)) if isinstance(n, ast.ClassDef)]
        datasets = [c.name for c in classes if _bases(c) & {"Dataset"}]
        models = [c.name for c in classes if _bases(c) & {"Module"}]
        assert not (datasets and models), f"{m} defines datasets {datasets} and models {models}"


# ----------------------------------------------------------------------------- facts spelled once
TRAINING_SCRIPTS = ("S3_train_pipeline1.py", "S4.2_train_pipeline2.py")


def test_repeated_facts_are_spelled_once():
    """In common/, S3 / S4.2 and S5: the run folder
    (constants.run_folder / run_of), the 6-decimal rounding of written probabilities
    (constants.PROB_DECIMALS), the pipeline-1 variants (augment.P1_VARIANTS) and the IMAGE_PRED check
    (predict.check_image_pred: any other function naming IMAGE_PREDS spells the check again) each live
    in one place."""
    found: dict[str, set[str]] = {k: set() for k in ("run folder", "round 6", "variants", "IMAGE_PRED")}
    sources = {**_modules(), **{name: ROOT / name for name in (*TRAINING_SCRIPTS, "S5_predict.py")}}
    for m, p in sources.items():
        if "fold{" in p.read_text() or ".parent.parent.name" in p.read_text():
            found["run folder"].add(m)
        for node in ast.walk(_tree(p)):
            if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("round")
                    and [ast.unparse(a) for a in node.args[1:]] == ["6"]):
                found["round 6"].add(m)
            if isinstance(node, ast.Tuple) and "'cellpool'" in [ast.unparse(e) for e in node.elts]:
                found["variants"].add(m)
        for name, fn in _functions(_tree(p), m):
            if any(isinstance(n, (ast.Name, ast.Attribute)) and ast.unparse(n).endswith("IMAGE_PREDS")
                   for n in ast.walk(fn)):
                found["IMAGE_PRED"].add(name)
    assert found == {"run folder": {"common.constants"}, "round 6": set(),
                     "variants": {"common.data.augment"},
                     "IMAGE_PRED": {"common.predict.predict.check_image_pred"}}


# ----------------------------------------------------------------------------- short functions
def test_functions_of_common_are_short():
    long = {f"{name}": _lines(fn) for m, p in _modules().items() for name, fn in _functions(_tree(p), m)
            if _lines(fn) > MAX_FUNCTION_LINES}
    unexplained = {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}
    assert not unexplained, f"functions over {MAX_FUNCTION_LINES} lines: {unexplained}"
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"LONG_FUNCTIONS lists functions that are short now (remove them): {stale}"


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [f"*{x.arg}" for x in (a.vararg, a.kwarg) if x is not None]
    return names[1:] if names and names[0] in ("self", "cls") else names


def test_functions_of_common_take_few_parameters():
    many = {name: len(_params(fn)) for m, p in _modules().items() for name, fn in _functions(_tree(p), m)
            if len(_params(fn)) > MAX_PARAMS}
    assert not many, f"functions of common/ with more than {MAX_PARAMS} parameters: {many}"


def test_modules_of_common_are_short():
    long = {m: len(p.read_text().splitlines()) for m, p in _modules().items()
            if len(p.read_text().splitlines()) > MAX_MODULE_LINES}
    unexplained = {m: n for m, n in long.items() if m not in LONG_MODULES}
    assert not unexplained, f"modules over {MAX_MODULE_LINES} lines: {unexplained}"
    stale = sorted(set(LONG_MODULES) - set(long))
    assert not stale, f"LONG_MODULES lists modules that are short now (remove them): {stale}"


def test_s5_main_only_wires():
    tree = _tree(ROOT / "S5_predict.py")
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert _lines(main) <= MAX_S5_MAIN_LINES, f"S5_predict.main is {_lines(main)} lines"
    long = {name: _lines(fn) for name, fn in _functions(tree, "S5") if _lines(fn) > MAX_S5_FUNCTION_LINES}
    assert not long, f"S5_predict.py functions over {MAX_S5_FUNCTION_LINES} lines: {long}"


def test_the_checks_see_hidden_imports_and_cycles(tmp_path, monkeypatch):
    """The checks themselves can fail: a function-level import and a two-module cycle are found."""
    fake = tmp_path / "common"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from common import b\n")
    (fake / "b.py").write_text("def f():\n    from common import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "COMMON", fake)
    for f in (_modules, _tree, _graph):
        f.cache_clear()
    try:
        with pytest.raises(AssertionError, match="import cycle: common.a -> common.b -> common.a"):
            _levels()
        with pytest.raises(AssertionError, match=r"common.b.f \(line 2\) imports \['common.a'\]"):
            test_no_function_imports_another_common_module()
    finally:
        for f in (_modules, _tree, _graph):
            f.cache_clear()
