"""The package installs as `agentkit` with graphs/, memory/ and cli/ mapped to
agentkit.graphs, agentkit.memory and agentkit.cli, from a built wheel too, and importing
it stays light."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_maps_the_top_level_folders_into_agentkit(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    [wheel] = tmp_path.glob("agentkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("agentkit/memory/library.py", "agentkit/store/runs.py", "agentkit/cli/app.py", "agentkit/graphs/__init__.py",
                   "agentkit/llm/transformers.py", "agentkit/tasks/arithmetic.py"):
        assert module in names
    assert not [n for n in names if n.split("/")[0] in ("memory", "cli", "graphs")]  # no generic top-level modules

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import importlib; "
            "print(*[importlib.import_module(m).__file__ for m in "
            "('agentkit.memory', 'agentkit.cli.app', 'agentkit.graphs', 'agentkit.tasks')])")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=tmp_path).stdout.split()
    assert all(path.startswith(str(site)) for path in out)


def test_importing_agentkit_does_not_import_torch():
    # nor the web stack: Starlette and uvicorn load with `agentkit serve` only
    code = "import sys, agentkit, agentkit.cli.app, agentkit.memory, agentkit.tasks, agentkit.runtime, agentkit.llm; " \
           "print(sorted(m for m in ('torch', 'transformers', 'langgraph', 'peft', 'starlette', 'uvicorn') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "[]"


def test_policy_helpers_load_without_torch():
    # `agentkit run --backend openai` wraps the backend with PolicyLLM / load_policy: no torch for that
    code = "import sys; from agentkit.runtime.policy import PolicyLLM, load_policy; " \
           "from agentkit.learn import gate, StepDPOConfig, ImproveConfig, TrainerConfig; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"
