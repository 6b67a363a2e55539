"""DPO trainer throughput: agentkit's Trainer against TRL's DPOTrainer, same model, pairs and machine.

Both train the same LoRA (r=16, alpha=32, no dropout, every linear layer but the head) on the
embedded gemma-3-270m with bf16 compute (base weights in bf16, fp32 LoRA weights, bf16 autocast),
the same loss (DPO sigmoid, beta 0.4, plus the NLL of the chosen tokens with weight 1: our
default, TRL's ``loss_type=["sigmoid", "sft"]``), AdamW lr 1e-4 constant, gradient clipping at
1.0, --batch pairs per optimizer step, no gradient accumulation, on exactly the same token ids:
the pairs are arithmetic step pairs as in bench/train_speed.py, given to TRL as
prompt/chosen/rejected text, tokenized by TRL (which appends EOS to each completion), and
agentkit's Trainer gets TRL's token ids.

Reference log-probabilities: agentkit caches them once before training; TRL does the same with
``precompute_ref_log_probs=True``. Both one-off passes are timed apart from the steps, and the
table shows throughput without them ("steps only") and with them amortised over the pairs
("incl. reference"). With --trl-defaults a further TRL run uses TRL's own defaults (reference
recomputed in every step with the adapter disabled, gradient checkpointing on).

The headline compares like with like: agentkit with prompt_grad=True computes the same
gradients as TRL's DPOTrainer (the prompt is backpropagated through). agentkit's default
(prompt_grad=False: the prompt runs without gradient into a KV cache) computes fewer
gradients, so its speed-up is a second, labelled row, never the headline.

Each trainer runs --warmup + --steps optimizer steps through its own training loop; only the
last --steps count (agentkit: the loop's per-step time; TRL: on_step_begin -> on_step_end,
i.e. forward, backward, clipping, AdamW and schedule step), reported as the median with the
min-max range. Both trainers compute in one dtype, by default the one this machine's matmul
runs faster in (``choose_dtype(workload="train")``). The runs are interleaved in one process
(agentkit prompt_grad=True, TRL, agentkit default, [TRL defaults]) so load from other jobs
on the machine falls on all of them alike.

    python bench/trl_compare.py                        # batch 4, 1 + 10 steps per trainer
    python bench/trl_compare.py --batch 2 --steps 10   # a loaded 2-core machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from _common import markdown_table, write_result  # noqa: E402

BETA, NLL_WEIGHT, LR, LORA_R, LORA_ALPHA = 0.4, 1.0, 1e-4, 16, 32
TRAINABLE: dict[str, int] = {}  # trainable parameters per trainer, to show the LoRA matches


def text_pairs(n: int) -> list[dict[str, str]]:
    """Step pairs as bench/train_speed.py builds them, as text: prompt = 3-shot prompt + "Step 1:",
    chosen = the right first step, rejected = the same step with the result off by one."""
    from agentkit.tasks import get_suite

    suite = get_suite("arithmetic")
    out = []
    for task in suite.tasks("train", n, seed=1):
        first = task.solution.splitlines()[0].split(":", 1)[1]  # " 23 - 15 = 8"
        wrong = first.rsplit("=", 1)[0] + "= " + str(int(first.rsplit("=", 1)[1]) + 1)
        out.append({"prompt": suite.prompt(task, shots=3) + "Step 1:", "chosen": first + "\n", "rejected": wrong + "\n"})
    return out


NOTES = """
What differs between the two (beyond the table):

- TRL scores every position through the LM head on a CPU. Its fused head (``add_fused_lm_head``, the
  chunked log-prob kernel) keeps only the completion positions on Triton devices (CUDA, XPU); elsewhere it
  projects the whole sequence (prompt included) onto the 262k vocabulary in 32k-column tiles, folds each
  tile with torch element-wise ops (also computing the entropy, mean-logit and top-1 metrics it logs), and
  in the backward recomputes every tile and accumulates the hidden-state gradient in fp32 (each bf16 tile
  and weight slice is copied to fp32 first). agentkit runs the head on the step positions only.
- TRL backpropagates through the prompt; agentkit's default runs the prompt without gradient into a KV
  cache (shared few-shot prefix once per batch) and backpropagates only the step tokens. The
  prompt_grad=True row is the like-for-like comparison of the loop (full body forward and backward).
- TRL here is set up in its favour: no gradient checkpointing (its default is on) and
  precompute_ref_log_probs=True (its default recomputes the reference with the adapter disabled in every
  step, an extra forward per step). Both trainers thus compute the reference once before training; that
  pass is timed separately and excluded from the step times (the \"incl. reference\" columns add it back).
- Same loss in both (DPO sigmoid + chosen NLL); TRL's NLL is the mean over all chosen tokens of the batch,
  ours the mean of per-pair length-normalised NLLs: the same compute. Optimizers: TRL uses transformers'
  default adamw_torch_fused, agentkit torch.optim.AdamW; both on the same 3.8M fp32 LoRA weights.
- Both train on the same token ids (TRL's tokenization, EOS appended to each completion); the data order
  within the epoch differs (each trainer's own seeded shuffle), so tok/s uses the mean tokens per pair.
- Both compute in the same dtype (TRL: bf16=True with use_cpu=True where it is bf16).
- TRL's DPOTrainer needs the `datasets` package (an install dependency of trl, which was missing from the
  venv: `import trl.trainer.dpo_trainer` failed with "No module named 'datasets'").
"""


def load_avg() -> float:
    return os.getloadavg()[0]


# --- TRL ---------------------------------------------------------------------------------------


def trl_trainer(path: Path, tokenizer, pairs: list[dict[str, str]], args, out_dir: str, *, defaults: bool):
    """A DPOTrainer set up like ours; with ``defaults`` TRL's own reference handling and
    gradient checkpointing. Returns (trainer, [(wall, CPU) seconds per step] as it trains,
    [reference-pass seconds])."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from agentkit.train.configs import ALL_LINEAR

    times: list[tuple[float, float]] = []
    ref_seconds = [0.0]

    class Timed(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            ref_seconds[0] += time.perf_counter() - t0
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t0 = (time.perf_counter(), time.process_time())

        def on_step_end(self, *_, **__):
            times.append((time.perf_counter() - self.t0[0], time.process_time() - self.t0[1]))

    config = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        beta=BETA,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, NLL_WEIGHT],
        bf16=args.dtype == "bf16",
        max_length=None,
        gradient_checkpointing=defaults,  # TRL's default is True
        precompute_ref_log_probs=not defaults,  # TRL's default is False: a reference forward in every step
        precompute_ref_batch_size=args.batch,
        use_cpu=True,
        dataloader_pin_memory=False,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(ALL_LINEAR),
                      task_type="CAUSAL_LM")
    trainer = Timed(model=model, args=config, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                    peft_config=lora, callbacks=[StepTimer()])
    TRAINABLE["TRL"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return trainer, times, ref_seconds


# --- agentkit ----------------------------------------------------------------------------------


def agentkit_run(model: str, examples, args, out_dir: str, *, prompt_grad: bool):
    """Our Trainer.train on ``examples``: ([(wall, CPU) seconds per step], reference-pass seconds).
    The CPU time of a step runs from the end of the one before (it includes the log record)."""
    from agentkit.train.trainer import DPOConfig, Trainer

    config = DPOConfig(dtype=args.dtype, prompt_grad=prompt_grad, batch_size=args.batch, grad_accum=1,
                       steps=args.warmup + args.steps, lr=LR, beta=BETA, nll_weight=NLL_WEIGHT, lora_r=LORA_R,
                       lora_alpha=LORA_ALPHA, lora_dropout=0.0, max_grad_norm=1.0, schedule="constant",
                       checkpoint_every=0, output_dir=out_dir, seed=0)
    times: list[tuple[float, float]] = []
    cpu_mark = [0.0]  # process CPU time at the end of the previous step (or of the reference pass)

    def on_log(record):
        cpu = time.process_time()
        times.append((record["seconds"], cpu - cpu_mark[0]))
        cpu_mark[0] = cpu

    ref_seconds = [0.0]

    def on_reference(seconds):  # the one-off reference pass, timed apart from the steps
        ref_seconds[0] += seconds
        cpu_mark[0] = time.process_time()

    trainer = Trainer(config, model, on_log=on_log, on_reference=on_reference)
    TRAINABLE["agentkit"] = sum(p.numel() for p in trainer.params)
    trainer.train(examples, resume=False)
    return times, ref_seconds[0]


SAME = "agentkit, prompt_grad=True (the same gradients as TRL)"
FEWER = "agentkit default, prompt_grad=False (no prompt gradients)"


# --- report ------------------------------------------------------------------------------------


def versions() -> str:
    import accelerate
    import peft
    import transformers
    import trl

    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "agentkit/train"], cwd=root, capture_output=True,
                           text=True).stdout.strip()
    state = " (agentkit/train has uncommitted changes)" if dirty else ""
    return (f"trl {trl.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
            f"accelerate {accelerate.__version__}, torch {torch.__version__}; agentkit at {commit}{state}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="pairs per optimizer step (both trainers)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per trainer (at least 10)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="compute dtype of both trainers (auto: the faster matmul on this machine)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--trl-defaults", action="store_true",
                        help="also time TRL with its defaults: reference in every step, gradient checkpointing")
    parser.add_argument("--name", default="trl_compare", help="result file bench/results/NAME.md")
    args = parser.parse_args()
    if args.dtype == "auto":
        from agentkit.llm.device import choose_dtype, matmul_speedup

        args.dtype = "bf16" if choose_dtype("cpu", workload="train") == torch.bfloat16 else "fp32"
        print(f"dtype {args.dtype}: bf16 matmul is {matmul_speedup():.2f}x the fp32 rate here", flush=True)

    from transformers import AutoTokenizer

    from agentkit.llm._malloc import tune_allocator
    from agentkit.llm.models import resolve_model
    from agentkit.train.trainer import PreferenceExample

    tune_allocator()  # agentkit's Trainer does this on start; done first so TRL runs under it too
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    n = args.batch * (args.warmup + args.steps)
    pairs = text_pairs(n)
    tmp = tempfile.mkdtemp(prefix="trl-compare-")
    loads = [load_avg()]
    t_start = time.perf_counter()
    results: dict[str, tuple[list[tuple[float, float]], float]] = {}
    errors: dict[str, str] = {}

    # TRL first builds its dataset (tokenize, append EOS, precompute the reference); our Trainer
    # then trains on exactly those token ids.
    try:
        trl, trl_times, trl_ref = trl_trainer(path, tokenizer, pairs, args, f"{tmp}/trl", defaults=False)
    except Exception as e:  # noqa: BLE001 - reported in the result file
        trl, errors["trl"] = None, f"{type(e).__name__}: {e}"
        print("TRL DPOTrainer failed to build:", errors["trl"], flush=True)
    if trl is not None:
        ds = trl.train_dataset
        examples = [PreferenceExample(list(p), list(c), list(r), i)
                    for i, (p, c, r) in enumerate(zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))]
    else:
        examples = []
        for i, x in enumerate(pairs):
            prompt = tokenizer(x["prompt"])["input_ids"]
            enc = lambda s: tokenizer(s + tokenizer.eos_token, add_special_tokens=False)["input_ids"]  # noqa: E731
            examples.append(PreferenceExample(prompt, enc(x["chosen"]), enc(x["rejected"]), i))

    def run(label: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            results[label] = fn()
        except Exception as e:  # noqa: BLE001 - reported in the result file
            errors[label] = f"{type(e).__name__}: {e}"
            print(f"{label} failed:", errors[label], flush=True)
        loads.append(load_avg())
        steps = [(round(w, 1), round(c, 1)) for w, c in results[label][0]] if label in results else None
        print(f"{label}: {time.perf_counter() - t0:.0f} s in all, steps (wall, CPU) {steps} s, load {loads[-1]:.1f}",
              flush=True)

    run(SAME, lambda: agentkit_run(args.model, examples, args, f"{tmp}/ak-pg", prompt_grad=True))
    if trl is not None:
        run("TRL DPOTrainer (precomputed reference, no checkpointing)",
            lambda: (trl.train(), (trl_times, trl_ref[0]))[1])
        del trl
    run(FEWER, lambda: agentkit_run(args.model, examples, args, f"{tmp}/ak", prompt_grad=False))
    if args.trl_defaults:
        def trl_defaults():
            trainer, times, ref = trl_trainer(path, tokenizer, pairs, args, f"{tmp}/trl-def", defaults=True)
            trainer.train()
            return times, ref[0]
        run("TRL DPOTrainer, TRL defaults (reference every step, gradient checkpointing)", trl_defaults)
    total = time.perf_counter() - t_start

    # --- table: throughput over the timed steps; the reference pass amortised over all pairs ---
    step_tokens = sum(len(x.chosen_ids) + len(x.rejected_ids) for x in examples) / len(examples)
    trl_label = next((k for k in results if k.startswith("TRL") and "defaults" not in k), None)
    rates: dict[str, tuple[float, float, float]] = {}  # pairs/s from median step times: wall, CPU, incl. reference
    rows = []
    for label, (times, ref) in results.items():
        wall = [w for w, _ in times[args.warmup:]]
        cpu = [c for _, c in times[args.warmup:]]
        sec_pair = statistics.median(wall) / args.batch
        cpu_pair = statistics.median(cpu) / args.batch
        rates[label] = (1 / sec_pair, 1 / cpu_pair, 1 / (sec_pair + ref / len(examples)))
        rows.append([label, f"{statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f})",
                     f"{statistics.median(cpu):.1f}", f"{1 / sec_pair:.3f}", f"{step_tokens / sec_pair:.1f}",
                     f"{ref:.0f}", f"{rates[label][2]:.3f}"])
        print(label, times, f"ref {ref:.1f} s", flush=True)
    headline = ""
    if trl_label:
        base = rates[trl_label]
        for row, label in zip(rows, results):
            row += [f"{rates[label][i] / base[i]:.2f}x" for i in range(3)]
        if SAME in results:
            headline = (f"**Same gradients as TRL (prompt_grad=True): {rates[SAME][0] / base[0]:.2f}x TRL's pairs/s** "
                        f"(median step times). ")
        if FEWER in results:
            headline += (f"With the prompt's gradients off (agentkit's default, fewer gradients than TRL computes): "
                         f"{rates[FEWER][0] / base[0]:.2f}x.")
    headers = ["trainer", "s / step: median (min-max)", "CPU s / step", "pairs/s", "step tok/s",
               "reference pass s", "pairs/s incl. reference"]
    headers += ["ratio vs TRL", "ratio, CPU time", "ratio incl. reference"] if trl_label else []
    table = markdown_table(headers, rows)

    prompt_len = sum(len(x.prompt_ids) for x in examples) / len(examples)
    body = (
        f"Model {args.model}, {args.dtype} compute ("
        + ("bf16 base weights, fp32 LoRA weights, bf16 autocast" if args.dtype == "bf16" else "fp32 weights")
        + f"), LoRA r={LORA_R} "
        f"alpha={LORA_ALPHA} on every linear layer but the head, DPO (beta {BETA}) + NLL of the chosen tokens (weight "
        f"{NLL_WEIGHT}), AdamW lr {LR}, {args.batch} step pairs per optimizer step; {len(examples)} pairs (prompt "
        f"{prompt_len:.0f} tokens, chosen + rejected {step_tokens:.1f} tokens per pair, EOS included), "
        f"{args.warmup} warm-up step(s) then {args.steps} timed steps per trainer. pairs/s, tok/s and the ratios "
        "come from the median step time (wall); \"step tok/s\" counts the chosen + rejected tokens the loss is on. \"CPU s / "
        "step\" is the process CPU time of a step (both threads): less sensitive than wall time to other jobs "
        "taking the cores, though OpenMP threads spinning while their partner waits for a core inflate it too; "
        f"\"ratio, CPU time\" compares on it. The reference pass (once, over all {len(examples)} pairs, "
        "before training, in both trainers) is not in the step times; \"incl. reference\" adds it per pair.\n\n"
        f"Trainable (LoRA) parameters: {', '.join(f'{k} {v:,}' for k, v in TRAINABLE.items())}. "
        f"Versions: {versions()}.\n\n"
        f"Machine shared with other jobs: 1-minute load average {', '.join(f'{x:.1f}' for x in loads)} (start, then "
        f"after each run) on {os.cpu_count()} cores; the whole bench took {total:.0f} s. Absolute times are upper "
        "bounds; the runs are interleaved so the load falls on each of them.\n\n"
        + (headline + "\n\n" if headline else "") + table + "\n"
    )
    body += NOTES
    if errors:
        body += "\nFailures:\n\n" + "\n".join(f"- {k}: `{v}`" for k, v in errors.items()) + "\n"
    print(body)
    if args.name:
        print(write_result(args.name, "DPO trainer throughput: agentkit vs TRL DPOTrainer", body))


if __name__ == "__main__":
    main()
