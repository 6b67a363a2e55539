#!/usr/bin/env bash
# shellcheck disable=SC2317  # the stage functions run through stage(), by name
# The GPU path in one command, on a machine with a CUDA GPU:
#
#     bench/gpu_smoke.sh
#
# Installs agentkit with vLLM ('.[vllm]') into a venv, runs the vLLM cases of the protocol
# suite, serves the embedded model through vLLM with a LoRA adapter hot-loaded, runs 16
# concurrent `agentkit run` tasks against that server, and runs one `agentkit improve`
# round (sampling and LoRA training on the GPU). Prints one row per stage (pass, FAIL or
# skip, seconds), writes the table to bench/results/gpu_smoke.md, and exits 1 if any stage
# failed (2 when there is no GPU). Logs stay in the work directory it names.
#
# Environment:
#   SMOKE_VENV     the venv to use, created when missing
#                  (default: $AGENTKIT_HOME/gpu-smoke-venv, so a CPU venv is never touched)
#   SMOKE_PYTHON   the Python that creates it (default: python3; agentkit needs >= 3.11)
#   SMOKE_MODEL    the model to serve and train (default: gemma-3-270m, the embedded one)
#   SMOKE_METHOD   the improve method (default: gold-sft, which always has data to train
#                  on; step-dpo trains only when the base model makes rectifiable mistakes)
#   SMOKE_READY_S  seconds to wait for the server (default: 900: the first use converts
#                  the embedded model, and vLLM compiles and captures CUDA graphs)

set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '3,/^$/s/^# \{0,1\}//p' "$0"
    exit 0
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOME_DIR=${AGENTKIT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/agentkit}
VENV=${SMOKE_VENV:-$HOME_DIR/gpu-smoke-venv}
PYTHON=${SMOKE_PYTHON:-python3}
MODEL=${SMOKE_MODEL:-gemma-3-270m}
METHOD=${SMOKE_METHOD:-gold-sft}
READY_S=${SMOKE_READY_S:-900}
PY=$VENV/bin/python
AGENTKIT=$VENV/bin/agentkit
ADAPTER=smoke-lora

# --- no GPU, no smoke test --------------------------------------------------------------------

if ! command -v nvidia-smi >/dev/null \
    || ! GPUS=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd ';' -) \
    || [[ -z $GPUS ]]; then
    echo "error: no CUDA GPU found (nvidia-smi lists none); this smoke test needs one" >&2
    exit 2
fi
for tool in curl setsid; do
    command -v "$tool" >/dev/null || { echo "error: $tool is needed; install it and run again" >&2; exit 2; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/agentkit-gpu-smoke.XXXXXX")
SERVER_PID=
PORT=
SERVE_HOW=

# --- the server ---------------------------------------------------------------------------------

start_server() {
    PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local cmd=("$AGENTKIT" serve --backend vllm --model "$MODEL" --host 127.0.0.1 --port "$PORT")
    SERVE_HOW="agentkit serve --backend vllm"
    # its own session, so that stopping it also stops vLLM's engine process
    setsid "${cmd[@]}" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
}

server_alive() {
    [[ -n $SERVER_PID ]] && kill -0 -- "-$SERVER_PID" 2>/dev/null
}

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    local i
    # SIGTERM, not SIGINT: a background job of a script starts with SIGINT ignored
    kill -TERM "$SERVER_PID" 2>/dev/null || true  # the server closes vLLM and exits
    for ((i = 0; i < 60; i++)); do server_alive || break; sleep 0.5; done
    if server_alive; then  # what is left of its session, vLLM's engine process included
        kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do server_alive || break; sleep 0.5; done
    fi
    if server_alive; then
        kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

trap stop_server EXIT
trap 'exit 130' INT TERM

# --- stages: each runs in a subshell with `set -e`, its output in $WORK/<stage>.log --------------

declare -A RESULT=() SECS=()
STAGES=()

note() {  # a stage's one-line note for the table
    echo "$*" >"$WORK/$STAGE.note"
}

stage() {  # stage NAME "STAGES IT NEEDS" FUNCTION
    local name=$1 needs=$2 fn=$3 dep t0 rc
    STAGES+=("$name")
    for dep in $needs; do
        if [[ ${RESULT[$dep]:-} != pass ]]; then
            RESULT[$name]=skip SECS[$name]=-
            echo "skipped: $dep did not pass" >"$WORK/$name.note"
            return 0
        fi
    done
    echo "[$(date +%H:%M:%S)] $name ..." >&2
    t0=$(date +%s.%N)
    set +e
    (STAGE=$name; set -e; "$fn") >"$WORK/$name.log" 2>&1
    rc=$?
    set -e
    SECS[$name]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if ((rc == 0)); then RESULT[$name]=pass; else RESULT[$name]=FAIL; fi
}

install_venv() {
    [[ -x $PY ]] || "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install --upgrade pip
    "$PY" -m pip install -e "${REPO}[vllm]" pytest
    note "$VENV"
}

check_cuda() {
    "$PY" - <<'PY'
import torch
import vllm

assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device (is it a CPU build?)"
print(f"torch {torch.__version__}, vLLM {vllm.__version__}, {torch.cuda.get_device_name(0)}")
PY
    note "$(tail -n 1 "$WORK/cuda.log")"
}

protocol_tests() {
    # the protocol suite's vllm cases: the backend in process, a real PEFT adapter of the model
    cd "$REPO"
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_llm_protocol.py -k vllm | tee "$WORK/protocol.out"
    if grep -q "needs vLLM and a GPU" "$WORK/protocol.out" || ! grep -Eq '[0-9]+ passed' "$WORK/protocol.out"; then
        echo "the vllm cases did not run; the skip reasons are above"
        return 1
    fi
    note "$(grep -E '[0-9]+ passed' "$WORK/protocol.out" | tail -n 1)"
}

make_adapter() {
    # a real PEFT LoRA adapter of the served model (the first use converts the embedded model)
    "$PY" - "$MODEL" "$WORK/adapter" <<'PY'
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from agentkit.llm.models import resolve_model

model_name, out = sys.argv[1:3]
model = AutoModelForCausalLM.from_pretrained(str(resolve_model(model_name)))
torch.manual_seed(0)
# random A and B (PEFT's default B = 0 would change nothing), scaled by alpha / r = 1/8;
# every linear layer, as agentkit's trainer targets, so vLLM's packed qkv and gate_up get some
config = LoraConfig(r=8, lora_alpha=1, init_lora_weights=False, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
get_peft_model(model, config).save_pretrained(out)
print(f"a random rank-8 LoRA adapter of {model_name} in {out}")
PY
    note "rank 8, every linear layer"
}

wait_ready() {
    local deadline=$((SECONDS + READY_S))
    until curl -sf --noproxy '*' "http://127.0.0.1:$PORT/health" >/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "the server exited; the end of $WORK/server.log:"
            tail -n 40 "$WORK/server.log"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "the server did not answer /health within ${READY_S}s; the end of $WORK/server.log:"
            tail -n 40 "$WORK/server.log"
            return 1
        fi
        sleep 2
    done
    note "$SERVE_HOW, port $PORT"
}

hot_load() {
    # POST /v1/load_lora_adapter into the running server, then check that the adapter answers
    "$PY" - "http://127.0.0.1:$PORT/v1" "$ADAPTER" "$WORK/adapter" <<'PY'
import sys

from agentkit.llm.base import GenerationRequest
from agentkit.llm.openai import OpenAIClientLLM

url, name, path = sys.argv[1:4]
client = OpenAIClientLLM(url)
client.load_adapter(name, path)
assert client.list_adapters() == [name], f"the server lists adapters {client.list_adapters()}, not [{name!r}]"
[[base]] = client.generate([GenerationRequest("Question: 12 + 7 =\nAnswer:", max_tokens=8)])
# both through score (prompt logprobs), so only the adapter differs between them
plain = client.score(base.prompt_ids, base.token_ids)
tuned = client.score(base.prompt_ids, base.token_ids, adapter=name)
moved = max(abs(a - b) for a, b in zip(plain, tuned))
print(f"the base model says {base.text!r}; the adapter moves its logprobs by up to {moved:.3f}")
assert moved > 1e-2, "the adapter leaves the base model's logprobs as they are: vLLM did not apply it"
PY
    note "$(tail -n 1 "$WORK/hot-load.log")"
}

run16() {
    "$AGENTKIT" run --backend openai --base-url "http://127.0.0.1:$PORT/v1" --model "$ADAPTER" \
        --n 16 --concurrency 16 --store "$WORK/runs.db" --json >"$WORK/run.json"
    "$PY" - "$WORK/run.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
print(f"{report['runs']} runs, {report['errors']} errors, success {report['success_rate']:.0%}, "
      f"{report['completion_tokens']} completion tokens at {report['completion_tokens_per_s']:.0f} tok/s")
assert report["runs"] == 16, f"{report['runs']} runs, not 16"
assert report["errors"] == 0, [r["error"] for r in report["results"] if r["status"] == "error"]
assert report["completion_tokens"] > 0, "no tokens were generated"
PY
    note "$(tail -n 1 "$WORK/run-16.log")"
}

improve_round() {
    # TransformersLLM and the Trainer both take CUDA when torch sees it (checked in `cuda`)
    "$AGENTKIT" improve --rounds 1 --method "$METHOD" --levels 1 --train-tasks 16 --eval-tasks 32 \
        --samples 2 --model "$MODEL" --out "$WORK/improve" --store "$WORK/improve.db"
    "$AGENTKIT" policy show v1 --store "$WORK/improve.db"  # the round trained and registered a candidate
    note "$METHOD: v1 trained and gated"
}

# --- the run ------------------------------------------------------------------------------------

echo "GPU: $GPUS; work directory: $WORK" >&2
stage install "" install_venv
stage cuda "install" check_cuda
stage protocol "cuda" protocol_tests
stage adapter "cuda" make_adapter
if [[ ${RESULT[cuda]} == pass ]]; then
    start_server
fi
stage serve "cuda" wait_ready
stage hot-load "serve adapter" hot_load
stage run-16 "hot-load" run16
stop_server  # improve needs the GPU memory vLLM holds
stage improve "cuda" improve_round

# --- the table ----------------------------------------------------------------------------------

table() {
    local name
    echo "| stage | result | seconds | note |"
    echo "|---|---|---:|---|"
    for name in "${STAGES[@]}"; do
        echo "| $name | ${RESULT[$name]} | ${SECS[$name]} | $(cat "$WORK/$name.note" 2>/dev/null || true) |"
    done
}

{
    echo "# GPU smoke test: vLLM serving with a LoRA adapter, 16 concurrent runs, one improve round"
    echo
    echo "- command: \`bench/gpu_smoke.sh\` (model $MODEL, improve method $METHOD)"
    echo "- machine: $GPUS; $(uname -sm); $(cat "$WORK/cuda.note" 2>/dev/null || echo 'torch/vLLM not installed')"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    table
} >"$WORK/gpu_smoke.md"
mkdir -p "$REPO/bench/results"
cp "$WORK/gpu_smoke.md" "$REPO/bench/results/gpu_smoke.md"

echo
printf '%-9s %-6s %8s  %s\n' stage result seconds note
for name in "${STAGES[@]}"; do
    printf '%-9s %-6s %8s  %s\n' "$name" "${RESULT[$name]}" "${SECS[$name]}" "$(cat "$WORK/$name.note" 2>/dev/null || true)"
done
failed=0
for name in "${STAGES[@]}"; do
    if [[ ${RESULT[$name]} == FAIL ]]; then
        failed=1
        echo
        echo "--- $name failed; the end of $WORK/$name.log:"
        tail -n 25 "$WORK/$name.log"
    fi
done
echo
echo "logs: $WORK; table: bench/results/gpu_smoke.md"
exit "$failed"
