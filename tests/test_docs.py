"""The user's documentation (README.md, docs/*.md, benchmarks/README.md) stays true to the code:
README.md is short; every ``python <script> --NAME value`` names a constant (or option) the script
has; every relative link points at an existing file (and heading); no text narrates history."""
from __future__ import annotations

import ast
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
README_MAX_LINES = 260
# words that narrate the project's history instead of saying what is (and was measured)
HISTORY = ["today", "before issue", "since issue", "earlier run", "earlier session", "used to",
           "new recipe", "was changed", "in this release", "before this release"]
RUN_ALL_STEP_ARGS = {"--p1-args": "S3_train_pipeline1.py", "--p2-args": "S4.2_train_pipeline2.py",
                     "--s41-args": "S4.1_crop_cells.py", "--s5-args": "S5_predict.py"}
NOTEBOOK_OPTIONS = {"-o", "--out", "--wheels", "-h", "--help"}  # tools/make_notebook.py's own options


def _docs() -> list[Path]:
    return [p for p in DOCS if p.is_file()]


# ----------------------------------------------------------------------------- what a script accepts
@cache
def accepted(script: str) -> frozenset[str] | None:
    """The ``--NAME`` options of a repository script: its constants block (the UPPER_CASE assignments
    before the first import, which ``common.config.parse`` accepts) or, for an argparse tool, the
    option strings of its ``add_argument`` calls. None for a shell script or a file that is not there."""
    path = ROOT / script
    if path.suffix != ".py" or not path.is_file():
        return None
    tree = ast.parse(path.read_text())
    if _uses_argparse(script):
        flags = {a.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "add_argument"
                 for a in n.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
        return frozenset(flags | {"-h", "--help"})
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            break
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()}
    return frozenset("--" + n for n in names) | {"-h", "--help"}


@cache
def _uses_argparse(script: str) -> bool:
    tree = ast.parse((ROOT / script).read_text())
    return any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
               for n in ast.walk(tree))


def _run_all_options() -> set[str]:
    return set(re.findall(r"^\s*(--[a-z0-9-]+)\)", (ROOT / "run_all.sh").read_text(), re.M))


def _normal(flag: str, config_style: bool) -> str:
    flag = flag.split("=", 1)[0]
    return "--" + flag[2:].upper().replace("-", "_") if config_style and flag.startswith("--") else flag


# ----------------------------------------------------------------------------- commands in the docs
def _code_spans(text: str) -> list[str]:
    """Fenced blocks (continuation lines joined) and inline code spans."""
    spans = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        spans += block.replace("\\\n", " ").splitlines()
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    spans += re.findall(r"`([^`\n]+)`", rest)
    return spans


def commands(text: str) -> list[list[str]]:
    """Each ``python <file>.py ...``, ``torchrun ... <file>.py ...`` or ``bash run_all.sh ...`` of a
    markdown text, as its tokens from the file on (comments and chained commands cut off)."""
    out = []
    for span in _code_spans(text):
        for part in re.split(r"&&|\|\||;|\|", span.split(" #", 1)[0]):
            try:
                tokens = shlex.split(part)
            except ValueError:
                tokens = part.split()
            for i, tok in enumerate(tokens):
                if tok in ("python", "python3", "torchrun", "bash"):
                    rest = tokens[i + 1:]
                    while rest and rest[0].startswith("-") and tok == "torchrun":
                        rest = rest[1:]
                    if rest and (rest[0].endswith(".py") or rest[0] == "run_all.sh"):
                        out.append(rest)
                    break
    return out


def unknown_options(cmd: list[str]) -> list[str]:
    """The options of one command that its script does not accept (a missing script is one)."""
    script, args = cmd[0], cmd[1:]
    if script == "run_all.sh":  # its own options, and the overrides it passes on to a step
        bad = [a for a in args if re.fullmatch(r"--[a-z0-9-]+", a) and a not in _run_all_options()]
        for opt, value in zip(args, args[1:]):
            if opt in RUN_ALL_STEP_ARGS:
                bad += unknown_options([RUN_ALL_STEP_ARGS[opt], *value.split()])
        return bad
    names = accepted(script)
    if names is None:
        return [f"{script} (no such script)"]
    config_style = not _uses_argparse(script)
    if script == "tools/make_notebook.py":  # the step's constants, after the step
        if args and args[0].startswith("<"):  # a placeholder: <step>
            return []
        if not args or accepted(args[0]) is None:
            return [f"{args[:1]} (no such step)"]
        names, args, config_style = accepted(args[0]) | NOTEBOOK_OPTIONS, args[1:], True
    bad = []
    for a in args:
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", a):
            if _normal(a, config_style) not in names and a.split("=", 1)[0] not in names:
                bad.append(a)
    return bad


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_every_documented_command_names_real_options():
    seen, bad = 0, []
    for doc in _docs():
        for cmd in commands(doc.read_text()):
            seen += 1
            bad += [f"{doc.relative_to(ROOT)}: {' '.join(cmd[:2])} ... {u}" for u in unknown_options(cmd)]
    assert seen >= 20, f"only {seen} commands found in the docs: is the extraction broken?"
    assert not bad, "options the scripts do not have:\n" + "\n".join(bad)


def test_the_checker_catches_a_renamed_constant():
    assert unknown_options(["S3_train_pipeline1.py", "--DATA_DIR", "x"]) == ["--DATA_DIR"]
    assert unknown_options(["S3_train_pipeline1.py", "--PIPELINE", "1"]) == ["--PIPELINE"]
    assert unknown_options(["tools/make_notebook.py", "S5_predict.py", "--TTA", "8", "-o", "a"]) == []
    assert unknown_options(["tools/make_notebook.py", "S5_predict.py", "--EPOCHS", "8"]) == ["--EPOCHS"]
    assert unknown_options(["tools/pack_runs.py", "output", "--OUT", "p", "--DATASET_ID", "a/b"]) == []
    assert unknown_options(["run_all.sh", "--real", "--recipe", "x"]) == ["--recipe"]
    assert unknown_options(["run_all.sh", "--real", "--p2-args", "--FOLD 1 --DATA_DIR x"]) == ["--DATA_DIR"]
    assert commands("`python S5_predict.py --TTA 8 && python S6_evaluate.py --N_BOOT 5`") == [
        ["S5_predict.py", "--TTA", "8"], ["S6_evaluate.py", "--N_BOOT", "5"]]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_relative_links_point_at_existing_files_and_headings():
    bad = []
    for doc in _docs():
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("word", HISTORY)
def test_no_history_narration(word):
    hits = [f"{doc.relative_to(ROOT)}:{i}: {line.strip()[:100]}" for doc in _docs()
            for i, line in enumerate(doc.read_text().splitlines(), 1)
            if re.search(rf"\b{word}\b", line, re.I)]
    assert not hits, (f"'{word}' narrates history; say what is, and the command that measures it:\n"
                      + "\n".join(hits))


# ----------------------------------------------------------------------------- the first screen
FIRST_SCREEN = 20  # the README lines a newcomer sees first
FIRST_COMMANDS = ["pip install -r requirements.txt -c requirements-lock.txt && bash run_all.sh",
                  "pip install -r requirements.txt -c requirements-lock.txt && python -m pytest -q"]


def test_the_first_screen_shows_the_two_commands_each_on_one_line_in_one_block():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    blocks = [b.strip().splitlines() for b in re.findall(r"```[^\n]*\n(.*?)```", head, re.S)]
    assert FIRST_COMMANDS in blocks, blocks
    rows = [line for line in head.splitlines() if line.startswith("| ")]
    assert any("`python -m pytest -q`" in r and "min" in r and "(#tests)" in r for r in rows)  # tests row
    assert any("`bash run_all.sh`" in r and "CPU" in r for r in rows)                           # demo time
    assert any("five notebooks, then pack your runs" in r and "(#kaggle-step-by-step)" in r for r in rows)


def test_each_own_images_example_writes_to_its_own_folder():
    """README examples with other IMAGES never share an OUTPUT_DIR (the second would replace the first);
    without --OUTPUT_DIR, S5 writes to output/<IMAGES folder name>."""
    folders: dict[str, set[str]] = {}
    for cmd in commands((ROOT / "README.md").read_text()):
        if cmd[0] == "S5_predict.py" and "--IMAGES" in cmd:
            images = cmd[cmd.index("--IMAGES") + 1]
            own = f"output/{Path(images).name}"                       # OUTPUT_DIR's default with IMAGES
            out = cmd[cmd.index("--OUTPUT_DIR") + 1] if "--OUTPUT_DIR" in cmd else own
            folders.setdefault(out, set()).add(images)
    assert len(folders) >= 2 and all(len(images) == 1 for images in folders.values()), folders
