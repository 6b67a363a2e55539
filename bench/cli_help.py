"""Cold start of the CLI: `agentkit --help` in a fresh process, and whether importing the
CLI pulls in torch or transformers (it must not).

    python bench/cli_help.py            # 10 runs, writes bench/results/cli_help.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from _common import markdown_table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    exe = shutil.which("agentkit") or str(__import__("pathlib").Path(sys.executable).parent / "agentkit")
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import agentkit.cli.app"], capture_output=True, text=True
    ).stderr
    heavy = sorted({line.rsplit("|", 1)[-1].strip().split(".")[0] for line in imports.splitlines()
                    if line.rsplit("|", 1)[-1].strip().split(".")[0] in ("torch", "transformers", "peft", "langgraph")})
    rows = [["agentkit --help", args.runs, min(times), statistics.median(times), max(times), ", ".join(heavy) or "none"]]
    body = markdown_table(["command", "runs", "min s", "median s", "max s", "heavy imports"], rows)
    body += "\n\nTarget (issue 2): < 1 s cold, no torch import."
    print(body)
    print("wrote", write_result("cli_help", "CLI cold start", body))


if __name__ == "__main__":
    main()
