"""A non-editable install: the `iterprime-eval` console command works from any directory, the
package carries its own data (the vocabulary and the shipped model; nothing read from tests/ or
weights/), and the first command prints no backend-probe noise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Unable to initialize backend", "PyTorch was not found")


def test_installed_console_command_from_any_directory(tmp_path):
    src, target = tmp_path / "src", tmp_path / "site"  # build from a copy: no build/ in ROOT
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("iterprime_jax", "tfds_refcoco", "shapesref"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True)
    script = target / "bin" / "iterprime-eval"
    assert script.exists()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="",
               ITERPRIME_CACHE=str(tmp_path / "cache"))
    help_ = subprocess.run([str(script), "--help"], cwd=cwd, env=env, capture_output=True,
                           text=True, check=True).stdout
    assert "--dataset" in help_ and "--record" in help_ and "--iterations" in help_
    # the installed copy, with the training vocabulary inside it
    code = ("import iterprime_jax, shapesref.training as t; "
            "print(iterprime_jax.__file__); print(t.DEFAULT_VOCAB, t.DEFAULT_VOCAB.is_file())")
    where = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert where[0].startswith(str(target)) and where[1].startswith(str(target))
    assert where[2] == "True"
    # a real run of the installed command (torch hidden: the library never needs it), from
    # another directory, without --weights: the shipped model inside the installed package
    run = ("import sys; sys.modules['torch'] = None; sys.argv[0] = 'iterprime-eval'; "
           "from iterprime_jax.evaluation.cli import entry; entry()")
    proc = subprocess.run(
        [sys.executable, "-c", run, "--limit", "1", "--no-progress", "--manual-dir", "raw",
         "--data-dir", "tfds", "--out", "out", "--record", "rec.json"],
        cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prec@0.5" in proc.stdout
    for noise in NOISE:
        assert noise not in proc.stderr + proc.stdout, noise
    rec = json.loads((cwd / "rec.json").read_text())
    assert rec["command"].startswith("iterprime-eval --limit 1")
    assert rec["metrics"]["val"]["n"] == rec["sentences"] > 0
    assert (cwd / "out" / "metrics.json").is_file()
    weights = json.loads((cwd / "out" / "run_config.json").read_text())["weights"]
    assert weights == str(target / "iterprime_jax" / "data" / "shapesref-itm"), weights
