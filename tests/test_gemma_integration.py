"""End to end on the real embedded Gemma 3 270M: the default solve agent on a few
arithmetic tasks, recorded in a real SQLite store, with the recorded token ids and
logprobs reproduced by score().

Tolerances: fp32 within 1e-3 nats per token (measured: max 3e-5). bf16 computes the
transformer in bf16 in both paths, and a batched, KV-cached decode rounds differently
from one full forward pass: measured per-token mean 0.004 and max 0.10 nats on this
machine, so the test allows mean <= 0.02 and max <= 0.3."""

from __future__ import annotations

import statistics

import pytest

from agentkit.llm.transformers import TransformersLLM
from agentkit.store import TrajectoryStore
from agentkit.runtime import SolveAgent, run_tasks
from agentkit.tasks import get_suite

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_gemma_runs_arithmetic_and_score_reproduces_the_store(dtype, tmp_path):
    suite = get_suite("arithmetic")
    tasks = suite.tasks("test", n=4, level=1)
    with TransformersLLM("gemma-3-270m", dtype=dtype) as llm, TrajectoryStore(tmp_path / "runs.db") as store:
        report = run_tasks(llm, suite, tasks, store, agent=SolveAgent(max_tokens=48), concurrency=4)
        assert report.n == 4 and all(r.status in ("success", "failure") for r in report.results)
        assert llm.stats["max_rows_in_batch"] >= 2  # the four runs were batched together
        diffs = []
        for result in report.results:
            [step] = store.steps(result.run_id)
            assert step.completion_ids and len(step.completion_ids) == len(step.logprobs)
            assert llm.tokenize(step.prompt_text) == step.prompt_ids
            assert llm.decode(step.completion_ids).startswith(step.completion_text)
            assert "Step 1:" in step.completion_text  # the few-shot format took
            scored = llm.score(step.prompt_ids, step.completion_ids)
            diffs += [abs(a - b) for a, b in zip(scored, step.logprobs)]
        if dtype == "fp32":
            assert max(diffs) <= 1e-3
        else:
            assert statistics.mean(diffs) <= 0.02 and max(diffs) <= 0.3


def test_bf16_runs_from_the_cli_through_plain_layers_without_warnings(tmp_path):
    """What a user of a CPU without AVX-512 gets: `agentkit run --dtype bf16` serves from
    plain bf16 layers (packing off, as the probe turns it off there), and nothing but
    agentkit's own output reaches the terminal: no library warning."""
    import os
    import re
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "agentkit.cli", "run", "--dtype", "bf16", "--n", "5", "--store", str(tmp_path / "runs.db")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "AGENTKIT_PACK_WEIGHTS": "0", "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"success rate .* \(\d/5\)", result.stdout), result.stdout[-1500:]
    output = result.stdout + result.stderr
    for noise in ("Warning", "warn(", "Traceback"):
        assert noise not in output, output[-2000:]
