"""Turn a numbered script into one self-contained Kaggle notebook (no internet, no repo needed).

    python tools/make_notebook.py S5_predict.py --TTA 8 -o S5_predict.ipynb
    python tools/make_notebook.py S3_train_pipeline1.py --MODEL_NAME resnet50 --PRETRAINED false

Meant for S2, S3, S4.1, S4.2 and S5 (any numbered script of the same shape works). The notebook is
generated from the code as it is, so regenerate it after a change rather than editing it. Cells:

1. a note: which datasets to attach, under which names (``/kaggle/input/<name>``, see STEPS and
   DATASETS) and which constants point at each, what the step writes for the next notebook and
   how it becomes a dataset, then the script's docstring;
2. an import check: every package the step imports is looked up; a missing one is named with the
   offline install line ``pip install --no-index --find-links <WHEELS> ...`` (run for you when
   that folder exists; tools/make_wheelhouse.sh makes it). Versions outside requirements.txt are
   reported as a warning (torch / torchvision: any version of NOTEBOOK_RANGES, the pins being for
   bit-exact repeats); the versions found are printed;
3. setup: Kaggle mode on (``KAGGLE=1``, common/constants.py) and the ``common/`` package, carried
   as a base64 zip (deterministic, with its sha256): written once to a temporary folder and put
   first on ``sys.path``. A zip keeps the notebook one file and one cell for the ~40 modules, byte
   for byte the repository's code (checked by the hash), and about half the size of the plain
   sources (a notebook is 265-290 kB, 225 kB of it the zip in base64; this tool prints each size);
4. the script's constants block, editable and constants only, its paths pointing at the attached
   datasets (``/kaggle/input/<name>``) and outputs under ``/kaggle/working``, with any
   ``--NAME value`` given to this tool. A ``--RECIPE`` is resolved here, once: its constants are
   written into the cell, marked (``config.RESOLVED_RECIPE``) so that the run takes the cell as
   edited instead of applying the recipe again; what runs is printed first;
5. the rest of the script (imports and functions; the ``sys.path`` line and ``__main__`` guard
   dropped);
6. ``main([])``: the constants of cell 4 as edited, no command line. A step that stops shows its one
   line (no traceback, no IPython "To exit" warning) and ends Run all.

The notebook names the version it is made from: the git commit, or, from an archive without git, the
sha256 of the ``common/`` zip it carries (the hash its setup cell checks).

The Kaggle tree is ``constants.kaggle_root()`` (``$KAGGLE_ROOT``, default ``/kaggle``): tests
generate notebooks for a temporary tree.
"""
from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import io
import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import config, constants, recipes  # noqa: E402
from common.io import atomic_write_text  # noqa: E402

WHEELS = constants.WHEELS_DATASET  # name of the wheels dataset (tools/make_wheelhouse.sh), under <root>/input
# Datasets a notebook may attach, by their name under /kaggle/input: what each holds, where it comes from
# (the steps' "missing input" messages name them too: constants.missing_input).
DATASETS = constants.KAGGLE_DATASETS
# Per script: the datasets that are optional, the Kaggle values of constants other than the default
# mapping (input/<name> -> /kaggle/input/<name>, output -> /kaggle/working; "working" and "input/<name>"
# are taken under the Kaggle root), and what the step leaves for the next notebook.
STEPS = {
    "S2_data_process.py": dict(
        optional={"hpa-seg": "without it the built-in watershed segments"},
        values={"HPA512_DIR": "working"},
        writes="its outputs straight into `{working}` (HPA512_DIR). Save this notebook's output as a dataset "
               "named `hpa-512`: the S3, S4.1, S4.2 and S5 notebooks attach it."),
    "S3_train_pipeline1.py": dict(
        optional={}, values={},
        writes="the run under `{working}/<run>/fold<k>/` (OUTPUT_DIR; best.pth, last.pth, config.json, ...). "
               "For S5 it becomes the dataset `hpa-runs`: {runs}."),
    "S4.1_crop_cells.py": dict(
        optional={}, values={"CELLS_DIR": "working"},
        writes="the cell crops straight into `{working}` (CELLS_DIR). Save this notebook's output as a "
               "dataset named `hpa-cells`: the S4.2 notebook attaches it."),
    "S4.2_train_pipeline2.py": dict(
        optional={"hpa-single-cell-image-classification": "the cell-level validation (demo data only)"},
        values={"CELLS_DIR": "input/hpa-cells"},
        writes="the run under `{working}/<run>/fold<k>/` (OUTPUT_DIR). For S5 it becomes the dataset "
               "`hpa-runs`: {runs}."),
    "S5_predict.py": dict(
        optional={"hpa-512": "S2's test masks; without them S5 segments the test images itself",
                  "hpa-seg": "without it the built-in watershed segments"},
        values={"RUNS_DIR": "input/hpa-runs", "OUTPUT_DIR": "working"},
        writes="`{working}/submission.csv` (OUTPUT_DIR): the file Kaggle scores."),
}
# The versions a notebook accepts where requirements.txt pins an exact build (the pins are for bit-exact
# repeats; the code needs torch.amp.GradScaler, torch 2.3): any recent torch of a Kaggle image does.
NOTEBOOK_RANGES = {"torch": ">=2.3", "torchvision": ">=0.18"}
DISTRIBUTIONS = constants.DISTRIBUTIONS  # import name -> distribution name, where they differ


# ----------------------------------------------------------------------------- reading a script
def split_script(source: str, name: str = "script") -> dict:
    """The parts of a numbered script: docstring, constants block, rest (imports and functions)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    doc = ast.get_docstring(tree) or ""
    first_import = next((n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                         and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")), None)
    ruler = next((i for i, line in enumerate(lines) if line.startswith("# ----")), None)
    if first_import is None or ruler is None or ruler >= first_import.lineno - 1:
        raise SystemExit(f"{name}: expected a constants block under '# ----' rulers before the imports")
    block = "\n".join(lines[ruler:first_import.lineno - 1]).rstrip() + "\n"
    drop: set[int] = set()
    for node in tree.body[tree.body.index(first_import):]:
        text = ast.get_source_segment(source, node) or ""
        main_guard = (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                      and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")
        path_line = "__file__" in text and not isinstance(node, (ast.FunctionDef, ast.ClassDef))
        if main_guard or path_line:  # the sys.path line; __main__ runs in its own cell
            drop.update(range(node.lineno - 1, node.end_lineno))
    rest = "\n".join(line for i, line in enumerate(lines) if i >= first_import.lineno - 1 and i not in drop)
    return {"doc": doc, "constants": block, "rest": rest.strip() + "\n"}


def block_defaults(block: str) -> dict:
    """The constants of a block (run on its own: it holds literals only)."""
    ns: dict = {}
    exec(compile(block, "<constants>", "exec"), ns)  # noqa: S102 - the repository's own constants block
    return config.constants_of(ns)


def kaggle_path(value: str, root: Path) -> str:
    """The Kaggle location of a path default: ``input/<name>/...`` -> ``<root>/input/<name>/...`` (an
    attached dataset), ``output/...`` and ``working`` -> ``<root>/working/...``; else "" (no path)."""
    parts = Path(value).parts
    if len(parts) > 1 and parts[0] == "input":
        return str(root.joinpath(*parts))
    if parts and parts[0] in ("output", "working"):
        return str(root.joinpath("working", *parts[1:]))
    return ""


def kaggle_values(script: str, defaults: dict, root: Path | None = None) -> dict:
    """Kaggle paths for the path constants of a script (see kaggle_path, STEPS)."""
    root = constants.kaggle_root() if root is None else root
    out = {k: kaggle_path(v, root) for k, v in defaults.items() if isinstance(v, str)}
    out = {k: v for k, v in out.items() if v}
    extra = STEPS.get(script, {}).get("values", {})
    out.update({k: kaggle_path(v, root) for k, v in extra.items() if k in defaults})
    return out


def attached(values: dict, root: Path) -> dict[str, list[str]]:
    """``dataset name -> the constants pointing into it`` (``<root>/input/<name>``), in order."""
    names: dict[str, list[str]] = {}
    for k, v in values.items():
        if isinstance(v, str) and Path(v).is_relative_to(root / "input") and Path(v) != root / "input":
            names.setdefault(Path(v).relative_to(root / "input").parts[0], []).append(k)
    return names


def note_cell(script: Path, values: dict, doc: str, commit: str, wheels: str, root: Path) -> str:
    """The first cell: what to attach, under which names, what the step writes for the next one."""
    step = STEPS.get(script.name, {"optional": {}, "writes": "see the docstring below"})
    lines = [f"# {script.stem}", "",
             f"Generated by `tools/make_notebook.py {script.name}` from the repository ({commit}); "
             "regenerate it rather than editing the code cells.", "",
             f"**Attach** these datasets (Add data); each appears at `{root}/input/<name>`, where the "
             "constants cell already points:"]
    for name, keys in attached(values, root).items():
        why = DATASETS.get(name, "a dataset of yours")
        opt = step["optional"].get(name)
        lines.append(f"- `{root}/input/{name}` ({', '.join(keys)}): {why}"
                     + (f" (optional: {opt})" if opt else ""))
    lines += [f"- `{wheels}`: the wheels dataset, only if the import check asks for it", "",
              "**Writes** " + step["writes"].format(working=root / "working", runs=DATASETS["hpa-runs"]), "",
              "Then edit the constants cell if needed and run all. The setup cell turns Kaggle mode on "
              f"(`KAGGLE=1`): a relative path is read from `{root}/input/<name>` for `input/<name>/...` "
              f"when attached, else taken under `{root}/working`.", "",
              "```\n" + doc.strip() + "\n```"]
    return "\n".join(lines)


def literal(v) -> str:
    """Python source of a constant's value, strings in double quotes like the scripts' blocks."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    if isinstance(v, str):
        text = json.dumps(v, ensure_ascii=False)
        return text if ast.literal_eval(text) == v else repr(v)
    return repr(v)


def edit_block(block: str, values: dict) -> str:
    """The constants block with the given constants' values replaced, comments and layout kept."""
    tree = ast.parse(block)
    lines = block.splitlines()
    for node in reversed(tree.body):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in values):
            continue
        first, last = node.value.lineno - 1, node.value.end_lineno - 1
        head, tail = lines[first][:node.value.col_offset], lines[last][node.value.end_col_offset:]
        new = head + literal(values[node.targets[0].id])
        if tail.strip():  # keep the comment in its column when there is room
            comment = tail.lstrip()
            col = len(lines[last]) - len(comment)
            new = new + " " * max(2, col - len(new)) + comment
        lines[first:last + 1] = [new]
    return "\n".join(lines) + "\n"


def resolved_recipe(block: str, name: str) -> str:
    """The constants block, whose values already hold recipe ``name``'s, marked so that the recipe is
    recorded, not applied again at run time over the cell as edited (``config.RESOLVED_RECIPE``)."""
    lines = block.splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(r"RECIPE\s*=", line))
    lines[at + 1:at + 1] = [
        f"# recipe {name} resolved when this notebook was made: its constants are the values in this cell,",
        "# which run as shown (edit any of them); naming another RECIPE above applies that one over the cell",
        f"{config.RESOLVED_RECIPE} = {literal(name)}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- imports
def _imports(source: str) -> tuple[set[str], set[str], set[str]]:
    """(module-level imports, imports inside functions, common.* modules named) of a module source."""
    top, lazy, local = set(), set(), set()
    tree = ast.parse(source)
    top_nodes: set[int] = set()

    def visit(node):  # what runs at import: module level, if/try/with/class bodies, not functions
        for sub in ast.iter_child_nodes(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                top_nodes.add(id(sub))
            elif not isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(sub)

    visit(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                     if node.module.split(".")[0] == "common" else [])
        else:
            continue
        for n in names:
            if n.split(".")[0] == "common":
                local.add(n)
            elif n.split(".")[0] not in sys.stdlib_module_names and n != "__future__":
                (top if id(node) in top_nodes else lazy).add(n.split(".")[0])
    return top, lazy, local


def needed_packages(script_source: str) -> tuple[list[str], list[str]]:
    """Third-party modules the script needs (imported by the script itself, in its functions too, or at
    module level by the common/ modules it reaches), and those only some settings import (inside
    functions of common/)."""
    required, optional, seen = set(), set(), set()
    todo = [(script_source, True)]
    while todo:
        src, reached_at_top = todo.pop()
        top, lazy, local = _imports(src)
        if src is script_source:  # the step's own work (S2's folds need iterstrat), checked up front
            top, lazy = top | lazy, set()
        (required if reached_at_top else optional).update(top)
        optional.update(lazy)
        for mod in sorted(local):
            path = ROOT / Path(*mod.split("."))
            for f in (path.with_suffix(".py"), path / "__init__.py"):
                if f.is_file() and (f, reached_at_top) not in seen:
                    seen.add((f, reached_at_top))
                    todo.append((f.read_text(), reached_at_top))
    return sorted(required), sorted(optional - required)


def requirement_specs() -> dict[str, str]:
    """{distribution (lower case): version specifier} from requirements.txt."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2).replace(" ", "")
    return out


def _dist(module: str) -> str:
    return DISTRIBUTIONS.get(module, module).lower().replace("_", "-")


# ----------------------------------------------------------------------------- the cells
def common_zip() -> bytes:
    """common/**/*.py as a deterministic zip (sorted names, fixed dates)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for f in sorted((ROOT / "common").rglob("*.py")):
            info = zipfile.ZipInfo(f.relative_to(ROOT).as_posix(), date_time=(2021, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, f.read_bytes(), compresslevel=9)
    return buf.getvalue()


def check_cell(required: list[str], optional: list[str], wheels: str) -> str:
    specs = {**requirement_specs(), **NOTEBOOK_RANGES}
    need = {m: (_dist(m), specs.get(_dist(m), "")) for m in required}
    maybe = {m: (_dist(m), specs.get(_dist(m), "")) for m in optional}
    return textwrap.dedent(f'''\
        # Import check: every package this step imports, looked up before anything runs.
        # Kaggle images lack some of them; bring them offline as a dataset of wheels
        # (tools/make_wheelhouse.sh) and attach it at _WHEELS: missing ones are installed from there.
        import importlib.metadata, importlib.util, os, subprocess, sys
        _WHEELS = {wheels!r}  # folder of the wheels dataset
        _NEED = {need!r}
        _MAYBE = {maybe!r}  # imported only by some settings

        def _missing(mods):
            return [m for m in mods if importlib.util.find_spec(m) is None]

        _miss = _missing(_NEED)
        if _miss and os.path.isdir(_WHEELS):
            _dists = sorted({{_NEED[m][0] for m in _miss}})
            print("installing from", _WHEELS, ":", " ".join(_dists))
            subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                                   _WHEELS, *_dists])
            importlib.invalidate_caches()
            _miss = _missing(_NEED)
        if _miss:
            _dists = " ".join(sorted({{_NEED[m][0] + _NEED[m][1] for m in _miss}}))
            class _Missing(ModuleNotFoundError):  # shown as its lines alone, and Run all ends here
                def _render_traceback_(self):
                    return str(self).splitlines()
            raise _Missing(
                f"missing package(s) for this step: {{', '.join(_miss)}}. Attach the wheels dataset "
                f"(tools/make_wheelhouse.sh) and run:\\n"
                f"!pip install --no-index --find-links {{_WHEELS}} {{_dists}}")
        for _m in _missing(_MAYBE):
            print(f"note: {{_m}} ({{_MAYBE[_m][0]}}) is not installed; only some settings need it")
        _found = {{}}
        for _m, (_d, _s) in {{**_NEED, **_MAYBE}}.items():
            try:
                _found[_m] = importlib.metadata.version(_d)
            except importlib.metadata.PackageNotFoundError:
                continue
        try:  # versions outside the accepted ranges: a warning (the step may still work)
            from packaging.specifiers import SpecifierSet
            for _m, _v in _found.items():
                _d, _s = {{**_NEED, **_MAYBE}}[_m]
                if _s and _v not in SpecifierSet(_s):
                    print(f"warning: {{_d}} {{_v}} installed, this step wants {{_s}} "
                          f"(pip install --no-index --find-links {{_WHEELS}} '{{_d}}{{_s}}')")
        except ImportError:
            pass
        print("imports ok:", ", ".join(f"{{_m}} {{_found.get(_m, '?')}}" for _m in _NEED))
        ''')


def common_cell(data: bytes, commit: str) -> str:
    digest = hashlib.sha256(data).hexdigest()
    b64 = base64.b64encode(data).decode()
    body = "\n".join(b64[i:i + 100] for i in range(0, len(b64), 100))
    return (
        "# Setup: Kaggle mode on, and the repository's common/ package\n"
        f"# ({commit}) carried as a zip of its sources: written once to a temporary folder and put\n"
        "# first on sys.path (regenerate the notebook to update it; tools/make_notebook.py).\n"
        "import base64, hashlib, io as _io, os, pathlib, sys, tempfile, zipfile\n"
        "os.environ['KAGGLE'] = '1'  # Kaggle mode: relative paths under /kaggle (common/constants.py)\n"
        "import warnings  # tqdm.auto (timm's hub code imports it) warns without ipywidgets; bars stay text\n"
        "warnings.filterwarnings('ignore', message='IProgress not found')\n"
        f"_SHA256 = {digest!r}\n"
        f'_ZIP = """\n{body}\n"""\n'
        "_data = base64.b64decode(_ZIP)\n"
        "assert hashlib.sha256(_data).hexdigest() == _SHA256, 'the embedded common/ zip is damaged'\n"
        "_dir = pathlib.Path(tempfile.gettempdir()) / f'hpa_common_{_SHA256[:16]}'\n"
        "if not (_dir / 'common' / '__init__.py').is_file():\n"
        "    _tmp = pathlib.Path(tempfile.mkdtemp(dir=tempfile.gettempdir()))\n"
        "    zipfile.ZipFile(_io.BytesIO(_data)).extractall(_tmp)\n"
        "    try:\n"
        "        _tmp.rename(_dir)\n"
        "    except OSError:  # made meanwhile by another kernel\n"
        "        pass\n"
        "for _m in [m for m in sys.modules if m == 'common' or m.startswith('common.')]:\n"
        "    del sys.modules[_m]  # a re-run takes this cell's package\n"
        "if str(_dir) not in sys.path:\n"
        "    sys.path.insert(0, str(_dir))\n"
        "del _ZIP, _data\n"
        "print('common/ from', _dir)\n")


def _md(text: str) -> dict:
    import nbformat

    return nbformat.v4.new_markdown_cell(text)


def _code(text: str) -> dict:
    import nbformat

    return nbformat.v4.new_code_cell(text.rstrip("\n"))


def _commit(common: bytes) -> str:
    """The version the notebook is made from: the git commit; from an archive (no git) the sha256 of the
    zipped common/ sources it carries (the setup cell checks the same hash)."""
    sha = dirty = ""
    try:
        git = ["git", "-C", str(ROOT), "rev-parse", "--show-toplevel", "--short", "HEAD"]
        said = subprocess.run(git, capture_output=True, text=True, timeout=10).stdout
        top, _, sha = said.strip().partition("\n")
        sha = sha if top and Path(top).resolve() == ROOT else ""  # not the repository of a folder above
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "common"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if sha:
        return f"git {sha}{' + local changes' if dirty else ''}"
    return f"no git: common/ sha256 {hashlib.sha256(common).hexdigest()[:16]}"


def make_notebook(script: str | Path, overrides: list[str] | None = None, wheels: str = WHEELS):
    """The notebook (an ``nbformat`` node) of a numbered script with ``--NAME value`` overrides."""
    import nbformat

    script = Path(script)
    if not script.is_absolute() and not script.is_file():
        script = ROOT / script
    if not script.is_file():
        raise SystemExit(f"{script}: no such script")
    source = script.read_text()
    parts = split_script(source, script.name)
    defaults = block_defaults(parts["constants"])
    root = constants.kaggle_root()
    values = kaggle_values(script.name, defaults, root)
    # a --RECIPE (S3, S4.2) writes its constants into the constants cell, overrides after it
    script_recipes = recipes.for_script({"S3_train_pipeline1.py": "S3", "S4.2_train_pipeline2.py": "S4.2"}
                                        .get(script.name, ""))
    given = config.parse(dict(defaults), overrides or [], update=False, quiet=True, recipes=script_recipes)
    values.update({k: v for k, v in given.items()
                   if k in defaults and (v != defaults[k] or k in _named(overrides or []))})
    required, optional = needed_packages(source)
    common = common_zip()
    commit = _commit(common)
    wheels_dir = str(root / "input" / wheels) if "/" not in wheels else wheels
    note = note_cell(script, values, parts["doc"], commit, wheels_dir, root)
    block = edit_block(parts["constants"], values)
    if "RECIPE" in given and given["RECIPE"]:
        block = resolved_recipe(block, given["RECIPE"])
    constants_cell = ("# Constants of " + script.name + " (inputs: the attached datasets under "
                      f"{root / 'input'}; outputs under {root / 'working'}). Edit, then run all: "
                      "what this cell shows is what runs.\n" + block)
    nb = nbformat.v4.new_notebook()
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}})
    nb.cells = [_md(note), _code(check_cell(required, optional, wheels_dir)),
                _code(common_cell(common, commit)), _code(constants_cell),
                _code(f"# {script.name} after its constants block\n" + parts["rest"]),
                _code(MAIN_CELL)]
    return nb


# The last cell: main() with the constants cell as edited; a step's stop (SystemExit) is shown as its one
# line (IPython's _render_traceback_: no traceback, no "To exit: use 'exit'" warning) and ends Run all.
MAIN_CELL = """\
globals().pop('_CONFIG_DEFAULTS', None)  # main() starts from the constants cell as edited


class StepStopped(Exception):  # the step stopped with one line: shown alone, and Run all ends here
    def _render_traceback_(self):
        return [f"stopped: {self}"]


try:
    result = main([])  # no command line
except SystemExit as e:
    if e.code not in (None, 0):
        raise StepStopped(e.code) from None
"""


def _named(argv: list[str]) -> set[str]:
    return {a[2:].split("=")[0].upper().replace("-", "_") for a in argv if a.startswith("--")}


def main(argv=None) -> Path:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="--NAME value: any constant of the script (as on its command line)")
    ap.add_argument("script", help="a numbered script, e.g. S5_predict.py")
    ap.add_argument("-o", "--out", default="", help="notebook to write (default: <script>.ipynb here)")
    ap.add_argument("--wheels", default=WHEELS, help="name of the wheels dataset under <root>/input, or its "
                    f"folder (default {WHEELS})")
    args, overrides = ap.parse_known_args(argv)
    nb = make_notebook(args.script, overrides, args.wheels)
    out = Path(args.out or Path(args.script).with_suffix(".ipynb").name)
    text = nbformat.writes(nb)
    atomic_write_text(out, text)  # a temporary of its own (O_EXCL), renamed: no planted link followed
    print(f"wrote {out} ({len(text.encode()) / 1e3:.0f} kB, {len(nb.cells)} cells)")
    return out


if __name__ == "__main__":
    main()
