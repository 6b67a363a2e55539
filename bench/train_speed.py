"""DPO training speed on the real model: where the trainer's forward/backward time goes.

Step pairs as Step-DPO makes them on arithmetic: prompt = the 3-shot prompt + "Step 1:",
chosen / rejected = one step line (about 12 tokens each). Each mode runs one warm-up and
timed optimizer steps of --pairs pairs (forward + backward + AdamW), the naive modes with
bf16 compute, the trainer's modes in each of --dtypes:

- naive: the usual setup - fp32 weights under bf16 autocast, the full model forward with
  logits for every position (the LM head runs over the whole prompt, and autocast copies
  its 262k x 640 weight to bf16 on every call), backprop through everything (micro-batches
  of 2 pairs: full logits for 8 pairs do not fit in 23 GB);
- full forward, bf16 weights: the same without the weight copies;
- head on step tokens: the frozen base held in bf16, logits only at the positions that
  predict step tokens, backprop through prompt and step (Trainer with prompt_grad=True);
- step tokens only: as above, and the prompt runs without gradient into a KV cache (its
  shared few-shot part once per batch), so only the step tokens are backpropagated
  (the Trainer's default, prompt_grad=False).

"step tok/s" counts the trained (chosen + rejected) tokens, "all tok/s" every token forwarded.

    python bench/train_speed.py                 # writes bench/results/train_speed.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from _common import markdown_table, write_result  # noqa: E402


def pairs(tokenizer, n: int):
    from agentkit.tasks import get_suite
    from agentkit.train.trainer import PreferenceExample

    suite = get_suite("arithmetic")
    out = []
    for task in suite.tasks("train", n, seed=1):
        first = task.solution.splitlines()[0].split(":", 1)[1]  # " 23 - 15 = 8"
        wrong = first.rsplit("=", 1)[0] + "= " + str(int(first.rsplit("=", 1)[1]) + 1)
        prompt = tokenizer(suite.prompt(task, shots=3) + "Step 1:", add_special_tokens=True)["input_ids"]
        enc = lambda s: tokenizer(s + "\n", add_special_tokens=False)["input_ids"]  # noqa: E731
        out.append(PreferenceExample(prompt, enc(first), enc(wrong)))
    return out


def naive_loss(model, batch, refs, beta: float):
    """The full forward: logits at every position, shifted, masked to the step tokens."""
    from agentkit.train.losses import dpo_nll_loss, sequence_logps

    rows = [(x.prompt_ids, c) for x in batch for c in (x.chosen_ids, x.rejected_ids)]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        mask[i, len(p): len(p) + len(c)] = True
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (N, L-1, V)
    logps = sequence_logps(logits, ids[:, 1:], mask[:, 1:]).view(-1, 2)
    lengths = mask[:, 1:].view(-1, 2, width - 1)[:, 0].sum(-1)
    losses, *_ = dpo_nll_loss(logps[:, 0], logps[:, 1], refs[:, 0], refs[:, 1], lengths, beta)
    return losses.mean(), int(mask.sum()), int(attn.sum())


def time_steps(step_fn, steps: int) -> tuple[float, int, int]:
    """(fastest wall seconds of ``steps`` timed steps, step tokens, all tokens), per step.
    The fastest step, as timeit does: on a shared machine slower ones measure the neighbours."""
    step_fn()  # warm-up: the first call pages in the weights and builds kernels
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        s, a = step_fn()
        best = min(best, time.perf_counter() - t0)
    return best, s, a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per trainer mode")
    parser.add_argument("--naive-steps", type=int, default=1, help="timed steps per naive mode (each takes a minute)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--modes", default="naive,naive-bf16,head,step", help="comma-separated: naive, naive-bf16, head, step")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated compute dtypes of the trainer modes (bf16, fp32)")
    parser.add_argument("--out", default="train_speed", help="result name under bench/results/")
    parser.add_argument("--naive-micro", type=int, default=2, help="pairs per micro-batch of the naive modes (memory)")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentkit.llm.models import resolve_model
    from agentkit.train.configs import ALL_LINEAR
    from agentkit.train.trainer import DPOConfig, Trainer

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    data = pairs(tokenizer, args.pairs)
    refs = torch.zeros((args.pairs, 2))
    modes = args.modes.split(",")
    results = []

    naive = {"naive": ("naive: full forward, fp32 weights + bf16 autocast", torch.float32),
             "naive-bf16": ("full forward, bf16 weights + autocast", torch.bfloat16)}
    for mode, (label, weights) in naive.items():
        if mode not in modes:
            continue
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=weights)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM"))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def naive_step():
            # micro-batches of --naive-micro pairs: full logits of 8 pairs would need ~20 GB
            s = a = 0
            for at in range(0, len(data), args.naive_micro):
                chunk = data[at: at + args.naive_micro]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss, s1, a1 = naive_loss(model, chunk, refs[at: at + len(chunk)], 0.4)
                (loss * len(chunk) / len(data)).backward()
                s, a = s + s1, a + a1
            opt.step()
            opt.zero_grad()
            return s, a

        results.append((label, *time_steps(naive_step, args.naive_steps)))
        print(results[-1], flush=True)
        del model, opt, naive_step

    for dtype in args.dtypes.split(","):
        for prompt_grad, label in ((True, "head on step tokens (prompt_grad=True)"), (False, "step tokens only (default)")):
            if ("head" if prompt_grad else "step") not in modes:
                continue
            trainer = Trainer(DPOConfig(dtype=dtype, prompt_grad=prompt_grad, output_dir="/tmp/agentkit-speed"), args.model)
            opt = torch.optim.AdamW(trainer.params, lr=1e-5)
            ref_list = [{"chosen": 0.0, "rejected": 0.0}] * len(data)

            def step():
                loss, parts = trainer.loss(data, ref_list)
                loss.backward()
                opt.step()
                opt.zero_grad()
                return parts["tokens"], sum(len(x.prompt_ids) * 2 + len(x.chosen_ids) + len(x.rejected_ids) for x in data)

            results.append((f"{label}, {dtype}", *time_steps(step, args.steps)))
            print(results[-1], flush=True)
            del trainer, opt

    base = results[0][1]
    rows = [[label, f"{sec:.2f}", f"{s / sec:,.0f}", f"{a / sec:,.0f}", f"{base / sec:.1f}x"] for label, sec, s, a in results]
    prompt_len = sum(len(x.prompt_ids) for x in data) / len(data)
    step_len = sum(len(x.chosen_ids) + len(x.rejected_ids) for x in data) / (2 * len(data))
    body = (
        f"Model {args.model}, LoRA r=16 on every linear layer, DPO + NLL loss, {args.pairs} step pairs "
        f"per optimizer step (prompt {prompt_len:.0f} tokens, step {step_len:.1f} tokens on average); the fastest of "
        f"{args.steps} timed steps ({args.naive_steps} for the full-forward modes) after one warm-up. The machine is "
        f"shared: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end of this run, so absolute "
        "times are upper bounds.\n\n"
        + markdown_table(["mode", "s / step", "step tok/s", "all tok/s", "speed-up"], rows)
    )
    print(body)
    print(write_result(args.out, "DPO training speed, step tokens only vs full forward", body))


if __name__ == "__main__":
    main()
