"""The command line starts without the heavy libraries: `castlab --help` and every command's
`--help` build their parsers with no torch, transformers, scipy, pandas or pyarrow imported
(they load inside the commands that use them), checked in a fresh interpreter's sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "scipy", "pandas", "pyarrow", "tokenizers", "matplotlib")

PROBE = r'''
import json, sys
from castlab import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules}
                                                & set(json.loads(sys.stdin.read())))}))
'''


def _probe(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CASTLAB_TCMALLOC": "0"}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], input=json.dumps(HEAVY), env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_top_level_help_imports_no_heavy_library():
    result = _probe("--help")
    assert result == {"code": 0, "heavy": []}


@pytest.mark.parametrize("command", [
    ["predict"], ["fit-law"], ["sweep"], ["status"], ["train"], ["eval-ppl"], ["bench"],
    ["report"], ["data", "prepare"], ["data", "pack"], ["teachers", "pack"], ["eval-zeroshot"],
    ["quantize"], ["finetune"], ["export"]])
def test_command_help_imports_no_heavy_library(command):
    result = _probe(*command, "--help")
    assert result == {"code": 0, "heavy": []}


def test_a_usage_error_is_one_line_without_heavy_imports():
    """A mistyped flag is reported before anything heavy loads (the parser alone decides)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CASTLAB_TCMALLOC": "0"}
    out = subprocess.run([sys.executable, "-m", "castlab.cli", "predict", "--law"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "argument --law: expected one argument" in out.stderr
