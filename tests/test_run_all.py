"""run_all.sh's final table: the demo's expected range printed beside the run's own figures."""
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
# stands in for python: every step succeeds at once; S6 prints fixed scores
case "$1" in
  S6_evaluate.py) printf 'mAP_strict=0.4321\\nmAP_lenient=0.8765\\n' ;;
esac
exit 0
"""


def _table(tmp_path: Path, *args: str) -> str:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "run_all.sh", repo / "run_all.sh")
    data = repo / "input" / "hpa-single-cell-image-classification"
    data.mkdir(parents=True)
    (data / "test_cells.csv").write_text("ID\n")
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    proc = subprocess.run(["bash", str(repo / "run_all.sh"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(stub)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo_prints_the_expected_range_under_its_own_figure(tmp_path):
    out = _table(tmp_path).splitlines()
    k = next(i for i, line in enumerate(out) if "ensemble (submission.csv)" in line)
    assert "mAP_strict=0.4321 mAP_lenient=0.8765" in out[k]
    expected = out[k + 1]
    assert "expected" in expected
    m = re.search(r"mAP_strict=(0\.\d+) ± (0\.\d+) mAP_lenient=(0\.\d+) ± (0\.\d+)", expected)
    assert m, expected
    strict, s_spread, lenient, l_spread = map(float, m.groups())
    assert 0 < strict < lenient < 1 and 0 < s_spread < 0.1 and 0 < l_spread < 0.1


def test_the_readme_quotes_the_range_that_run_all_prints(tmp_path):
    line = next(x for x in _table(tmp_path).splitlines() if "expected" in x)
    strict = re.search(r"mAP_strict=(\S+ ± \S+)", line)[1]
    lenient = re.search(r"mAP_lenient=(\S+ ± \S+)", line)[1]
    for doc in ("README.md", "docs/EXPERIMENTS.md"):
        text = (ROOT / doc).read_text()
        assert f"strict {strict}" in text and f"lenient {lenient}" in text, doc
