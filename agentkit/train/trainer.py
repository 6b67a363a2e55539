"""The LoRA trainer: the loop every method shares (the methods are in methods.py: DPO on
step-level or whole-output pairs, SFT, GRPO and RLOO).

One loop for every method, read top to bottom in ``Trainer.train``:

1. data -> examples (exact token ids; nothing is re-tokenized); GRPO/RLOO groups whose
   rewards are all equal train nothing and are counted in the stats, loudly;
2. reference log-probabilities computed ONCE with the policy as it is at the start of
   training (the incumbent: the base model, or the parent adapter), cached, checkpointed;
3. per optimizer step: ``grad_accum`` micro-batches of forward/backward, gradient clipping,
   AdamW step, schedule step, a log record (loss, reward margin, accuracy, tokens/s);
4. every ``checkpoint_every`` steps an atomic checkpoint (config, LoRA weights, optimizer,
   schedule, step, RNG states, data order, reference cache), from which ``train`` resumes
   after a crash or kill -9;
5. the final adapter in PEFT format (adapter_config.json + adapter_model.safetensors),
   which TransformersLLM.load_adapter and vLLM's LoRA loading read.

Speed on a CPU (RESEARCH.md, "What we measured"): logits are computed only at the
positions that predict completion tokens (the body runs over the whole sequence, the
262k-row LM head only over the step tokens); with ``prompt_grad=False`` (the default) the
prompt runs without gradient into a KV cache and only the step tokens are backpropagated;
the frozen base is held in the compute dtype, so bf16 autocast never copies the LM head's
weight. bf16 autocast where a matmul measures faster in bf16 (``choose_dtype``'s "train"
check), fp32 otherwise: the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from agentkit.errors import AgentkitError
from agentkit.train.configs import METHODS, DPOConfig, PGConfig, SFTConfig, TrainConfig, config_from_dict
from agentkit.train.examples import PreferenceExample, RLGroup, SFTExample, TrainResult
from agentkit.train.methods import SFT, Loss, Method, Preference, method_for

__all__ = [
    "TrainConfig",
    "DPOConfig",
    "SFTConfig",
    "PGConfig",
    "PreferenceExample",
    "SFTExample",
    "RLGroup",
    "Trainer",
    "TrainResult",
    "config_from_dict",
    "METHODS",
]

log = logging.getLogger("agentkit.train")

# Fields that do not change the arithmetic: a resumed run may differ in them.
_RESUMABLE = {"output_dir", "checkpoint_every", "keep_checkpoints", "log_every"}


# --- the trainer ------------------------------------------------------------------------------


class Trainer:
    """LoRA training of a causal LM on exact token ids.

    ``model``: a name or path for ``resolve_model`` ("gemma-3-270m"), or an already built
    transformers model (the trainer takes it over: LoRA layers are injected into it).
    ``parent_adapter``: a PEFT directory to continue training (its LoRA shape wins over the
    config's). ``on_log``: called with every log record and the run's ``total_steps``;
    ``on_reference``: with the seconds of the one-off reference pass (so a benchmark can time
    the steps apart from it). What the method adds to the loop (examples, reference, loss) is
    ``self.method`` (train/methods.py)."""

    def __init__(
        self,
        config: TrainConfig,
        model: Any = "gemma-3-270m",
        *,
        parent_adapter: str | os.PathLike[str] | None = None,
        device: str | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        on_reference: Callable[[float], None] | None = None,
    ):
        from agentkit.llm._malloc import tune_allocator
        from agentkit.llm.device import choose_dtype
        from agentkit.llm._kvcache import cache_argument  # imports transformers

        tune_allocator()

        self.config = config
        self.method = method_for(config)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        requested = os.environ.get("AGENTKIT_DTYPE", config.dtype) if config.dtype == "auto" else config.dtype
        self.dtype = choose_dtype(self.device, requested, workload="train")
        self.parent_adapter = None if parent_adapter is None else str(parent_adapter)
        self.on_log = on_log
        self.on_reference = on_reference
        self.model_name = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        torch.manual_seed(config.seed)  # the LoRA initialisation
        self.model = self._wrap(self._load(model))
        causal = self.model.get_base_model()
        self._body = causal.get_decoder() if hasattr(causal, "get_decoder") else causal.model
        self._cache_arg = cache_argument(self._body)
        self._head = causal.get_output_embeddings()
        self._vocabulary = self._allowed(config.allowed_token_ids)
        self._softcap = getattr(causal.config, "final_logit_softcapping", None)
        self._pad = causal.config.pad_token_id if causal.config.pad_token_id is not None else 0
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.output_dir = Path(config.output_dir)

    # ---- model -----------------------------------------------------------------------------

    def _load(self, model: Any) -> Any:
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM

            from agentkit.llm.models import resolve_model

            model = AutoModelForCausalLM.from_pretrained(str(resolve_model(str(model))), dtype=self.dtype)
        # The frozen base lives in the compute dtype: autocast then never re-casts its
        # weights (the LM head alone is 168M values on Gemma 3 270M).
        model.requires_grad_(False)
        return model.to(device=self.device, dtype=self.dtype)

    def _wrap(self, base: Any) -> Any:
        from peft import LoraConfig, PeftModel, get_peft_model

        from agentkit.llm.device import quiet_peft

        cfg = self.config
        with quiet_peft():
            if self.parent_adapter:
                model = PeftModel.from_pretrained(base, self.parent_adapter, is_trainable=True)
            else:
                lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
                model = get_peft_model(base, lora)
        for p in model.parameters():
            if p.requires_grad:  # fp32 master weights for the LoRA matrices
                p.data = p.data.float()
        return model

    def _allowed(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For ``allowed_token_ids``: their LM-head rows (A, D), and a (V,) map from token id
        to its row there (-1 for a token outside). None for the whole vocabulary."""
        if not ids:
            return None
        weight = self._head.weight
        ids = sorted(set(ids))
        if ids[-1] >= weight.shape[0]:
            raise AgentkitError(f"allowed_token_ids: {ids[-1]} is outside the model's vocabulary of {weight.shape[0]} "
                                "ids; build them with the model's tokenizer")
        index = torch.tensor(ids, device=self.device)
        rows = torch.full((weight.shape[0],), -1, dtype=torch.long, device=self.device)
        rows[index] = torch.arange(len(ids), device=self.device)
        return weight[index].detach().float(), rows

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype,
                              enabled=self.dtype != torch.float32)

    def _fit(self, prompt: list[int], completion: list[int]) -> tuple[list[int], list[int]]:
        limit = self.config.max_length
        if not limit or len(prompt) + len(completion) <= limit:
            return prompt, completion
        completion = completion[: limit - 1]
        keep = limit - len(completion)
        return prompt[:1] + prompt[len(prompt) - keep + 1:] if keep > 1 else prompt[:1], completion

    def _forward(self, prompts: Sequence[list[int]], completions: Sequence[list[int]]):
        """Logits at the positions that predict the completion tokens, and nowhere else.

        Returns logits (N, Tc, V), labels (N, Tc), mask (N, Tc), where Tc is the longest
        completion and logits[i, t] predicts labels[i, t] = completions[i][t]. With
        ``allowed_token_ids`` the logits are (N, Tc, A) over those ids, and the labels are
        positions among them."""
        pairs = [self._fit(list(p), list(c)) for p, c in zip(prompts, completions)]
        prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
        n, tc = len(prompts), max(len(c) for c in completions)
        labels = torch.zeros((n, tc), dtype=torch.long)
        mask = torch.zeros((n, tc), dtype=torch.bool)
        for i, c in enumerate(completions):
            labels[i, : len(c)] = torch.tensor(c)
            mask[i, : len(c)] = True
        labels, mask = labels.to(self.device), mask.to(self.device)
        window = getattr(self._body.config, "sliding_window", None) or 1 << 30
        longest = max(len(p) + len(c) for p, c in zip(prompts, completions))
        # (sliding-window layers would drop cached prompt keys past the window)
        if self.config.prompt_grad or min(len(p) for p in prompts) < 2 or longest >= window:
            hidden = self._hidden_full(prompts, completions, tc)
        else:
            hidden = self._hidden_step_only(prompts, completions, tc)
        if self._vocabulary is None:
            logits = self._head(hidden)  # (N, Tc, V): the head runs on the step positions only
        else:  # the policy that decodes only the allowed ids: its softmax runs over them alone
            head, rows = self._vocabulary
            with torch.autocast(device_type=self.device.split(":")[0], enabled=False):
                logits = hidden.float() @ head.T  # (N, Tc, A) in fp32, as the backend decodes: A rows cost nothing
            labels = torch.where(mask, rows[labels], 0)
            if (labels < 0).any():
                outside = completions[int((labels < 0).any(dim=1).nonzero()[0])]
                bad = next(t for t in outside if rows[t] < 0)
                raise AgentkitError(f"completion token {bad} is not among allowed_token_ids: this example was not "
                                    "written by the policy being trained; drop it or allow the token")
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits, labels, mask

    def _hidden_full(self, prompts: list[list[int]], completions: list[list[int]], tc: int) -> torch.Tensor:
        """Body over prompt + completion (right padded), then the hidden states at the positions
        that predict each completion token: (N, Tc, D)."""
        seqs = [p + c for p, c in zip(prompts, completions)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        hidden = self._body(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).last_hidden_state  # (N, L, D)
        starts = torch.tensor([len(p) - 1 for p in prompts], device=self.device)  # (N,)
        pos = (starts[:, None] + torch.arange(tc, device=self.device)).clamp(max=width - 1)  # (N, Tc)
        return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # (N, Tc, D)

    def _hidden_step_only(self, prompts: list[list[int]], completions: list[list[int]], tc: int) -> torch.Tensor:
        """The prompt (but its last token) runs once per distinct prompt without gradient into a
        KV cache (left padded); then [last prompt token] + completion[:-1] runs with gradient on
        top of it, so output t predicts completion[t]: (N, Tc, D). Exact forward values; the
        gradient through the prompt's keys and values is dropped."""
        from transformers import DynamicCache

        from agentkit.llm._kvcache import common_prefix

        distinct: dict[tuple[int, ...], int] = {}
        row_prompt = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        prefixes = [list(p[:-1]) for p in distinct]  # (the last prompt token runs with the step)
        # Few-shot prompts share most of their tokens: that part runs once, as one row.
        shared = common_prefix(prefixes, limit=min(len(p) for p in prefixes) - 1) if len(prefixes) > 1 else 0
        shared = shared if shared >= 16 else 0
        lp = max(len(p) for p in prefixes) - shared
        pids = torch.full((len(prefixes), lp), self._pad, dtype=torch.long)
        pmask = torch.zeros((len(prefixes), shared + lp), dtype=torch.long)
        pmask[:, :shared] = 1
        for i, p in enumerate(prefixes):  # left padding after the shared part: every prefix ends at column lp - 1
            rest = p[shared:]
            pids[i, lp - len(rest):] = torch.tensor(rest)
            pmask[i, shared + lp - len(rest):] = 1
        pids, pmask = pids.to(self.device), pmask.to(self.device)
        cache = DynamicCache(config=self._body.config)
        with torch.no_grad():
            if shared:
                self._body(input_ids=torch.tensor([prefixes[0][:shared]], device=self.device),
                           **{self._cache_arg: cache}, use_cache=True)
                cache.batch_repeat_interleave(len(prefixes))
            ppos = (pmask.cumsum(-1) - 1).clamp(min=0)[:, shared:]  # (P, Lp)
            self._body(input_ids=pids, attention_mask=pmask, position_ids=ppos, **{self._cache_arg: cache}, use_cache=True)
        index = torch.tensor(row_prompt, device=self.device)
        cache.batch_select_indices(index)  # (P, ...) -> (N, ...): rows sharing a prompt share its keys
        n = len(prompts)
        ids = torch.full((n, tc), self._pad, dtype=torch.long)
        cmask = torch.zeros((n, tc), dtype=torch.long)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids[i, : len(c)] = torch.tensor([p[-1]] + c[:-1])
            cmask[i, : len(c)] = 1
        ids, cmask = ids.to(self.device), cmask.to(self.device)
        attn = torch.cat([pmask[index], cmask], dim=1)  # (N, Lp + Tc)
        starts = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        pos = starts[:, None] + torch.arange(tc, device=self.device)  # (N, Tc)
        out = self._body(input_ids=ids, attention_mask=attn, position_ids=pos, **{self._cache_arg: cache}, use_cache=True)
        return out.last_hidden_state  # (N, Tc, D)

    # ---- data -------------------------------------------------------------------------------

    def _fingerprint(self, examples: list[Any]) -> str:
        digest = hashlib.sha256()
        for x in examples:
            digest.update(json.dumps(self.method.identity(x)).encode())
        return digest.hexdigest()

    def _order(self, n: int, needed: int) -> torch.Tensor:
        """The data order: one seeded permutation per epoch, concatenated."""
        gen = torch.Generator().manual_seed(self.config.seed)
        parts, total = [], 0
        while total < needed:
            parts.append(torch.randperm(n, generator=gen))
            total += n
        return torch.cat(parts)[:needed]

    # ---- reference ------------------------------------------------------------------------

    @torch.no_grad()
    def reference(self, examples: list[Any]) -> list[dict[str, Any]]:
        """The method's reference log-probabilities under the policy at the start of
        training (the incumbent), once per example, in batches, dropout off."""
        was_training = self.model.training
        self.model.eval()
        cache: list[dict[str, Any]] = []
        try:
            for start in range(0, len(examples), self.config.batch_size):
                with self._autocast():
                    cache.extend(self.method.reference(self._forward, examples[start: start + self.config.batch_size]))
        finally:
            self.model.train(was_training)
        return cache

    def loss(self, batch: list[Any], refs: list[dict[str, Any]]) -> Loss:
        """The method's loss on one micro-batch of prepared examples, and its log record."""
        with self._autocast():
            return self.method.loss(self._forward, batch, refs)

    # ---- the loop -------------------------------------------------------------------------------

    def train(self, data: Iterable[Any], *, resume: bool = True) -> TrainResult:
        """Train on ``data`` (PreferenceExample / SFTExample / RLGroup, or records with the same
        fields) and save the adapter. With ``resume``, continue from the newest checkpoint in
        output_dir when there is one (same config and data required)."""
        cfg = self.config
        examples, stats = self.method.prepare(list(data))
        stats["examples"] = len(examples)
        if not examples:
            log.warning("%s: nothing to train (%s); no adapter written", cfg.method, stats)
            return TrainResult(cfg.method, None, 0, None, {**stats, "trained": False}, [], cfg.to_dict())
        per_step = cfg.batch_size * cfg.grad_accum
        total = cfg.steps or max(1, math.ceil(cfg.epochs * len(examples) / per_step))
        fingerprint = self._fingerprint(examples)
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total))
        history: list[dict[str, Any]] = []
        elapsed, start_step, resumed_from = 0.0, 0, None

        checkpoint = self._latest_checkpoint() if resume else None
        if checkpoint is not None:
            # resume: weights, optimizer, schedule, RNG, data order and reference cache as saved
            start_step = resumed_from = self._restore(checkpoint, optimizer, scheduler, fingerprint, total)
            order, refs = checkpoint["order"], checkpoint["refs"]
            history, elapsed = checkpoint["history"], checkpoint["elapsed"]
            log.info("resuming %s from step %d of %d (%s)", cfg.method, start_step, total, self.output_dir)
        else:
            self._clear_checkpoints()
            order = self._order(len(examples), total * per_step)
            t0 = time.perf_counter()
            refs = self.reference(examples)
            if self.on_reference:
                self.on_reference(time.perf_counter() - t0)
        self._write_log(history)

        self.model.train()
        for step in range(start_step, total):
            t0 = time.perf_counter()
            # forward / backward over grad_accum micro-batches
            record: dict[str, float] = {}
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                at = (step * cfg.grad_accum + micro) * cfg.batch_size
                idx = order[at: at + cfg.batch_size].tolist()
                loss, parts = self.loss([examples[i] for i in idx], [refs[i] for i in idx])
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                for k, v in parts.items():
                    record[k] = record.get(k, 0.0) + (v if k == "tokens" else v / cfg.grad_accum)
            # clip, step, schedule
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # log
            seconds = time.perf_counter() - t0
            elapsed += seconds
            record = {"step": step + 1, "loss": loss_sum, **record, "grad_norm": float(norm),
                      "lr": scheduler.get_last_lr()[0], "seconds": seconds, "tokens_per_s": record["tokens"] / seconds}
            history.append(record)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                self._emit(record, total)
            # checkpoint
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                self._save_checkpoint(step + 1, total, optimizer, scheduler, order, refs, history, elapsed, fingerprint)

        adapter = self.save_adapter(self.output_dir / "adapter")
        tokens = sum(r["tokens"] for r in history)
        stats.update(trained=True, steps=total, trained_tokens=tokens, wall_s=elapsed,
                     tokens_per_s=tokens / elapsed if elapsed else 0.0, dtype=str(self.dtype).replace("torch.", ""),
                     base_model=str(self.model_name), parent_adapter=self.parent_adapter,
                     final=history[-1] if history else None)
        result = TrainResult(cfg.method, str(adapter), total, resumed_from, stats, history, cfg.to_dict())
        (self.output_dir / "train_result.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        return result

    def _emit(self, record: dict[str, Any], total: int) -> None:
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        log.info("%s %s", self.config.method, shown)
        with (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_log:
            self.on_log({**record, "total_steps": total})

    def _write_log(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl holds exactly the steps of this run (after a resume: up to the checkpoint)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for i, r in enumerate(history) if (i + 1) % self.config.log_every == 0]
        (self.output_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    # ---- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data: Iterable[Any], batch_size: int | None = None) -> dict[str, float]:
        """The current policy on held-out examples (dropout off), whatever the trained method.

        Pairs: mean log-prob margin logp(chosen) - logp(rejected), the share of pairs with a
        positive margin, chosen NLL per token. Completions: NLL per token."""
        items = list(data)
        unsupported = [type(x).__name__ for x in items if not (_has(x, "chosen_ids") or _has(x, "completion_ids"))]
        if unsupported:
            raise AgentkitError(f"evaluate takes preference pairs or SFT examples, not {unsupported[0]}")
        bs = batch_size or self.config.batch_size
        was_training = self.model.training
        self.model.eval()
        sums: dict[type[Method], dict[str, Any]] = {}
        try:
            for start in range(0, len(items), bs):
                batch = items[start: start + bs]
                piece = Preference if all(_has(x, "chosen_ids") for x in batch) else SFT
                with self._autocast():
                    part = piece.evaluate(self._forward, batch)
                total = sums.setdefault(piece, {})
                for k, v in part.items():
                    total[k] = total[k] + v if k in total else v
        finally:
            self.model.train(was_training)
        return {k: v for piece, total in sums.items() for k, v in piece.summary(total).items()}

    # ---- saving ----------------------------------------------------------------------------

    def save_adapter(self, path: str | os.PathLike[str]) -> Path:
        """The LoRA weights in PEFT format (adapter_config.json + adapter_model.safetensors),
        written to a temporary directory and renamed into place."""
        import shutil

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp), safe_serialization=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    @property
    def _checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def _checkpoints(self) -> list[Path]:
        if not self._checkpoint_dir.is_dir():
            return []
        return sorted(self._checkpoint_dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def _clear_checkpoints(self) -> None:
        for p in self._checkpoints():
            p.unlink()

    def _save_checkpoint(self, step: int, total: int, optimizer: Any, scheduler: Any, order: torch.Tensor,
                         refs: list[Any], history: list[dict[str, Any]], elapsed: float, fingerprint: str) -> Path:
        """Everything needed to continue bit-for-bit, written atomically (temp file, fsync, rename)."""
        state = {
            "format": 1,
            "config": self.config.to_dict(),
            "parent_adapter": self.parent_adapter,
            "step": step,
            "total_steps": total,
            "lora": {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "order": order,
            "refs": refs,
            "history": history,
            "elapsed": elapsed,
            "fingerprint": fingerprint,
        }
        self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self._checkpoint_dir / f"step-{step:06d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self._checkpoint_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self._checkpoints()[: -self.config.keep_checkpoints]:
            old.unlink()
        return path

    def _latest_checkpoint(self) -> dict[str, Any] | None:
        for path in reversed(self._checkpoints()):
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:  # noqa: BLE001 - a damaged file: fall back to the one before
                log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, e)
        return None

    def _restore(self, ckpt: dict[str, Any], optimizer: Any, scheduler: Any, fingerprint: str, total: int) -> int:
        mine = {k: v for k, v in self.config.to_dict().items() if k not in _RESUMABLE}
        saved = {k: v for k, v in ckpt["config"].items() if k not in _RESUMABLE}
        if mine != saved:
            diff = ", ".join(f"{k} {saved.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(mine) | set(saved))
                             if mine.get(k) != saved.get(k))
            raise AgentkitError(f"{self.output_dir} holds checkpoints of another config ({diff}); "
                                "pass a new output_dir, or train(..., resume=False) to start over")
        if ckpt["fingerprint"] != fingerprint or ckpt["total_steps"] != total:
            raise AgentkitError(f"{self.output_dir} holds checkpoints of other training data; pass the same "
                                "examples to resume, a new output_dir, or train(..., resume=False)")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["lora"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        random.setstate(ckpt["rng"]["python"])
        if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        return int(ckpt["step"])


# --- helpers ---------------------------------------------------------------------------------


def _has(record: Any, name: str) -> bool:
    return name in record if isinstance(record, dict) else hasattr(record, name)


def _schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
