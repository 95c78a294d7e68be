"""GRPO training step: ssp vs TRL's GRPOTrainer on the same task, in one process, alternating.

    python benchmarks/train_step_vs_trl.py            # SmolLM2-135M (embedded), LoRA and full
    python benchmarks/train_step_vs_trl.py --quick    # tiny random model, 2 steps per mode (CI)

The task (identical for both):
  * model: the embedded SmolLM2-135M-Instruct folder (`--quick`: the tiny random model saved to a
    temporary folder); both load it from the same folder, fp32, on CPU;
  * prompts: P fixed chat prompts ("Write a detailed essay about ..."), G samples each (one
    optimizer step per P·G completions), sampling at temperature 1, top-p 1, no top-k,
    `max_completion_length` L;
  * reward: a deterministic function of the completion text (share of vowels among its letters),
    continuous, so no group is flat and both frameworks train on every sample;
  * loss: clipped policy gradient (ε = 0.2) + β·KL(k3 estimator) to the reference (LoRA: the
    adapter disabled; full: a frozen copy), token mean over the whole step (TRL `loss_type="dapo"`,
    ssp's `grpo_update`), group advantages (r − mean) / (std + 1e-4) with Bessel's std;
    TRL's `use_bias_correction_kl` is switched off so the KL gradient is the same as ssp's;
  * micro-batch M for both (TRL: per_device_train_batch_size = M, gradient accumulation =
    steps_per_generation = P·G / M); AdamW, same learning rate, constant schedule, grad-norm clip 1;
  * gradient checkpointing off on both; `--dtype` the same for both: bfloat16 (default) = fp32 master weights
    with bf16 autocast for the update on both sides (TRL: `use_cpu=True, bf16=True`; ssp: `rl.compute_dtype`),
    and each framework's own bf16 rollouts (ssp: its native engine's bf16 weight copy; TRL: `generate` under
    its autocast); float32 = everything fp32 (TRL `bf16=False`; ssp: native engine in fp32).

TRL's `train()` drives the loop; a callback runs one ssp step after each TRL optimizer step, so the
two alternate step by step and see the same machine load. The first `--warmup` steps of each are
not counted. Per step we record wall time, the time inside `model.generate` (both frameworks call
the same transformers `generate`), and the generated completion tokens. Before timing, a check
computes the per-token log-probabilities and the loss of the same fixed batch with both
implementations (same weights) and records the largest differences.

Headline: `ratio_ssp_over_trl` = median ssp step time / median TRL step time in LoRA mode (the
default `model.finetune`), with `ratio_ssp_over_trl_full` beside it. Lower is better; target ≤ 1.0.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

NAME = "train_step_vs_trl"
TARGET_RATIO = 1.0
TOPICS = [
    "the history of the printing press in Europe",
    "how bees communicate inside a hive",
    "the causes and effects of the industrial revolution",
    "the water cycle and its role in climate",
    "how vaccines train the immune system",
    "the invention of the telescope",
    "the life cycle of a star",
    "why the Roman empire declined",
]
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def task_prompts(n: int) -> list[str]:
    return [f"Write a detailed, multi-paragraph essay about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def vowel_share(text: str) -> float:
    """The reward: share of vowels among the letters (deterministic, continuous)."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def prepare_model_dir(quick: bool, workdir: Path) -> Path:
    """The folder both frameworks load: the embedded SmolLM2 folder, or the tiny model saved to disk."""
    if not quick:
        from ssp.models.embedded import embedded_model_dir

        return embedded_model_dir()
    from ssp.config import TinyModelConfig
    from ssp.models.tiny import build_tiny_model

    model, tok = build_tiny_model(TinyModelConfig(), seed=0)
    path = workdir / "tiny-model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class GenerateTimer:
    """Wraps one HF model's `generate` (instance attribute) and accumulates its wall time."""

    def __init__(self, hf_model):
        self.seconds = 0.0
        original = hf_model.generate

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        hf_model.generate = timed

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def _hf_module(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ---------------------------------------------------------------- ssp side
class SSPRunner:
    """One GRPO step the way ssp's trainer does it: HF rollouts, group advantages, `grpo_update`."""

    def __init__(self, model_dir: Path, mode: str, s: dict):
        from ssp.config import LoraConfig, ModelConfig, RLConfig, SamplingConfig
        from ssp.models.loader import load_policy
        from ssp.rollout.base import ChatRequest
        from ssp.rollout.engines import build_rollout_engine

        cfg = ModelConfig(
            name_or_path=str(model_dir),
            finetune=mode,
            max_prompt_tokens=768,
            lora=LoraConfig(
                r=LORA["r"],
                alpha=LORA["lora_alpha"],
                dropout=LORA["lora_dropout"],
                target_modules=LORA["target_modules"],
            ),
        )
        self.model, self.tok = load_policy(cfg, seed=0)
        self.reference = None
        if mode == "full" and s["beta"] > 0:  # as ssp's trainer does
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=s["learning_rate"], weight_decay=0.0)
        self.engine = build_rollout_engine("auto", self.model, self.tok, 768, s["rollout_batch"], dtype=s["dtype"])
        self.rl = RLConfig(
            learning_rate=s["learning_rate"],
            kl_coef=s["beta"],
            clip_eps=0.2,
            micro_batch_size=s["micro_batch"],
            epochs=1,
            max_grad_norm=1.0,
            compute_dtype=s["dtype"],
        )
        self.sampling = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=s["max_completion_length"])
        self.requests = [ChatRequest([{"role": "user", "content": p}]) for p in task_prompts(s["prompts"])]
        self.G = s["num_generations"]
        self.gen_timer = GenerateTimer(_hf_module(self.model))

    def step(self) -> dict:
        from ssp.rl.grpo import TrainSample, group_advantages, grpo_update

        t: dict = {}
        with common.timer(t, "step"):
            with common.timer(t, "rollout"):
                groups = self.engine.generate(self.requests, self.sampling, n=self.G)
            samples, prompt_tokens = [], 0
            for group in groups:
                adv = group_advantages([vowel_share(c.text) for c in group])
                samples += [TrainSample("defender", c.prompt_ids, c.completion_ids, a) for c, a in zip(group, adv)]
                prompt_tokens += sum(len(c.prompt_ids) for c in group)
            with common.timer(t, "update"):
                stats = grpo_update(
                    self.model, self.optimizer, samples, self.rl, self.tok.pad_token_id, reference_model=self.reference
                )
                self.engine.refresh_weights()  # the native engine's weight copy follows the update
        t["generate"] = self.gen_timer.take()
        t["completion_tokens"] = sum(len(s.completion_ids) for s in samples)
        t["prompt_tokens"] = prompt_tokens
        t["trained_samples"] = stats.samples
        t["loss"] = stats.loss
        return t


# ---------------------------------------------------------------- TRL side
def build_trl(model_dir: Path, mode: str, s: dict, steps: int, workdir: Path, callbacks: list):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    per_step = s["prompts"] * s["num_generations"]
    accumulation = per_step // s["micro_batch"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = GRPOConfig(
            output_dir=str(workdir / f"trl-{mode}"),
            use_cpu=True,
            bf16=s["dtype"] == "bfloat16",
            fp16=False,
            gradient_checkpointing=False,
            max_completion_length=s["max_completion_length"],
            num_generations=s["num_generations"],
            per_device_train_batch_size=s["micro_batch"],
            gradient_accumulation_steps=accumulation,
            steps_per_generation=accumulation,
            learning_rate=s["learning_rate"],
            beta=s["beta"],
            epsilon=0.2,
            loss_type="dapo",
            scale_rewards="group",
            use_bias_correction_kl=False,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            num_iterations=1,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=steps,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            seed=0,
            disable_tqdm=True,
            model_init_kwargs={"dtype": "float32"},
            dataloader_num_workers=0,
        )
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **LORA)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in task_prompts(s["prompts"])])
    counter = {"completion_tokens": 0}

    def vowel_reward(completions, completion_ids=None, **kwargs):
        counter["completion_tokens"] += sum(len(c) for c in completion_ids or [])
        return [vowel_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=str(model_dir),
            reward_funcs=vowel_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its per-step log dicts would drown the table
    return trainer, counter


# ---------------------------------------------------------------- equivalence check
def check_equivalence(ssp: SSPRunner, trainer, s: dict) -> dict:
    """Same weights, same fixed batch: per-token log-probs and the loss value from both implementations."""
    from trl.trainer.utils import pad

    from ssp.rl.grpo import TrainSample, collate, completion_logprobs, token_loss_terms

    g = torch.Generator().manual_seed(0)
    vocab = ssp.model.config.vocab_size
    samples = []
    for i, req in enumerate(ssp.requests[:4]):
        prompt_ids = ssp.engine.encoder.encode(req)[0]
        n = max(2, s["max_completion_length"] - 3 * i)
        samples.append(
            TrainSample(
                "defender",
                prompt_ids,
                torch.randint(3, vocab, (n,), generator=g).tolist(),
                advantage=float(torch.randn((), generator=g)),
            )
        )
    trl_model = trainer.model  # same folder, untrained: equal weights (LoRA: B = 0, both equal the base model)
    ssp.model.train(), trl_model.train()
    tensors = collate(samples, ssp.tok.pad_token_id, torch.device("cpu"))
    logp = completion_logprobs(ssp.model, *tensors)

    prompt_ids = pad(
        [torch.tensor(x.prompt_ids) for x in samples], padding_value=ssp.tok.pad_token_id, padding_side="left"
    )
    prompt_mask = pad(
        [torch.ones(len(x.prompt_ids), dtype=torch.long) for x in samples], padding_value=0, padding_side="left"
    )
    completion_ids = pad(
        [torch.tensor(x.completion_ids) for x in samples], padding_value=ssp.tok.pad_token_id, padding_side="right"
    )
    completion_mask = pad(
        [torch.ones(len(x.completion_ids), dtype=torch.long) for x in samples], padding_value=0, padding_side="right"
    )
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention = torch.cat([prompt_mask, completion_mask], 1)
    trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(trl_model, input_ids, attention, completion_ids.size(1))
    trl_flat = trl_logp[completion_mask.bool()]
    logp_diff = (logp - trl_flat).abs().max().item()

    # the loss with a reference that differs from the policy (log-probs + noise) and random advantages
    noise = 0.1 * torch.randn(logp.shape, generator=g)
    ref_flat = logp.detach() + noise
    per_row = [len(x.completion_ids) for x in samples]
    adv = torch.cat([torch.full((n,), x.advantage) for x, n in zip(samples, per_row)])
    total = sum(per_row)
    loss_tokens, _ = token_loss_terms(
        logp, logp.detach(), ref_flat, adv, torch.ones_like(adv), torch.zeros_like(adv), clip_eps=0.2, kl_coef=s["beta"]
    )
    ssp_loss = (loss_tokens.sum() / total).item()
    ref_padded = torch.zeros(completion_mask.shape)
    ref_padded[completion_mask.bool()] = trl_flat.detach() + noise
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([x.advantage for x in samples]),
        "ref_per_token_logps": ref_padded,
        "old_per_token_logps": None,
        "num_items_in_batch": torch.tensor(float(total)),
    }
    trainer.current_gradient_accumulation_steps = trainer.args.steps_per_generation  # one window = the batch
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trl_model, inputs).item()
    trainer._metrics["train"].clear()
    return {
        "max_abs_logp_diff": logp_diff,
        "ssp_loss": ssp_loss,
        "trl_loss": trl_loss,
        "loss_abs_diff": abs(ssp_loss - trl_loss),
        "tokens": total,
    }


# ---------------------------------------------------------------- one mode
def run_mode(model_dir: Path, mode: str, s: dict, workdir: Path) -> dict:
    from transformers import TrainerCallback

    steps = s["warmup"] + s["steps"]
    torch.manual_seed(0)
    ssp = SSPRunner(model_dir, mode, s)
    rows: dict[str, list[dict]] = {"ssp": [], "trl": []}

    class Alternate(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.trl_gen = None

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            trl_step = time.perf_counter() - self.t0
            rows["trl"].append(
                {"step": trl_step, "generate": self.trl_gen.take(), "completion_tokens": counter["completion_tokens"]}
            )
            counter["completion_tokens"] = 0
            rows["ssp"].append(ssp.step())  # noqa: F821 - `ssp` is bound below, before train() calls back
            print(
                f"  step {len(rows['ssp'])}: TRL {rows['trl'][-1]['step']:.1f} s, ssp {rows['ssp'][-1]['step']:.1f} s "
                f"(load {common.loadavg()})",
                flush=True,
            )
            self.t0 = time.perf_counter()  # TRL's next step includes its logging of this one

    cb = Alternate()
    trainer, counter = build_trl(model_dir, mode, s, steps, workdir, [cb])
    cb.trl_gen = GenerateTimer(_hf_module(trainer.model))
    threads_after_trl = torch.get_num_threads()
    equivalence = check_equivalence(ssp, trainer, s)
    trainer.train()

    out = {"mode": mode, "threads_after_trl_init": threads_after_trl, "equivalence": equivalence, "per_step": rows}
    for name, rs in rows.items():
        measured = rs[s["warmup"] :]
        summary = {k: common.stats(r[k] for r in measured) for k in ("step", "generate")}
        summary["rest"] = common.stats(r["step"] - r["generate"] for r in measured)
        summary["completion_tokens"] = common.stats(r["completion_tokens"] for r in measured)
        summary["seconds_per_1k_completion_tokens"] = common.stats(
            1000 * r["step"] / max(1, r["completion_tokens"]) for r in measured
        )
        if name == "ssp":
            summary["update"] = common.stats(r["update"] for r in measured)
            summary["rollout"] = common.stats(r["rollout"] for r in measured)
        out[name] = summary
    out["ratio_ssp_over_trl"] = out["ssp"]["step"]["median"] / out["trl"]["step"]["median"]
    out["ratio_generate"] = out["ssp"]["generate"]["median"] / out["trl"]["generate"]["median"]
    out["ratio_rest"] = out["ssp"]["rest"]["median"] / out["trl"]["rest"]["median"]
    out["ratio_per_token"] = (
        out["ssp"]["seconds_per_1k_completion_tokens"]["median"]
        / out["trl"]["seconds_per_1k_completion_tokens"]["median"]
    )
    del trainer, ssp
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--steps", type=int, default=None, help="measured steps per mode (default 3; quick 1)")
    p.add_argument("--warmup", type=int, default=1, help="steps per mode not counted")
    p.add_argument("--prompts", type=int, default=4, help="P: prompts per step")
    p.add_argument("--num-generations", type=int, default=4, help="G: samples per prompt (group size)")
    p.add_argument("--max-completion-length", type=int, default=None, help="L (default 48; quick 8)")
    p.add_argument("--micro-batch", type=int, default=4, help="M: sequences per forward/backward")
    p.add_argument("--beta", type=float, default=0.02, help="KL coefficient (ssp rl.kl_coef default)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 2e-4 LoRA, 1e-5 full)")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="compute dtype for both frameworks (bf16 autocast on fp32 weights, or fp32)",
    )
    args = p.parse_args(argv)
    common.apply_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    machine = common.machine_info()
    common.print_machine(machine)

    base = {
        "model": "tiny (random, saved to a temporary folder)" if args.quick else "embedded SmolLM2-135M-Instruct",
        "prompts": args.prompts,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length or (8 if args.quick else 48),
        "micro_batch": args.micro_batch,
        "rollout_batch": args.prompts * args.num_generations,
        "beta": args.beta,
        "steps": args.steps or (1 if args.quick else 3),
        "warmup": args.warmup,
        "reward": "share of vowels among the completion's letters",
        "sampling": "temperature 1, top_p 1, top_k 0",
        "quick": args.quick,
        "dtype": args.dtype,
    }
    if (base["prompts"] * base["num_generations"]) % base["micro_batch"]:
        p.error("prompts × num-generations must be a multiple of --micro-batch")
    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="ssp-bench-trl-") as tmp:
        model_dir = prepare_model_dir(args.quick, Path(tmp))
        for mode in args.modes:
            s = {**base, "learning_rate": args.lr or (2e-4 if mode == "lora" else 1e-5)}
            print(
                f"[{mode}] {s['warmup']} warm-up + {s['steps']} measured steps each, alternating TRL / ssp ...",
                flush=True,
            )
            results.append({**run_mode(model_dir, mode, s, Path(tmp)), "learning_rate": s["learning_rate"]})

    by_mode = {r["mode"]: r for r in results}
    headline_mode = "lora" if "lora" in by_mode else results[0]["mode"]
    headline = {"ratio_ssp_over_trl": by_mode[headline_mode]["ratio_ssp_over_trl"]}
    for mode, r in by_mode.items():
        headline[f"ratio_ssp_over_trl_{mode}"] = r["ratio_ssp_over_trl"]
    rows = []
    for r in results:
        for name in ("ssp", "trl"):
            x = r[name]
            rows.append(
                [
                    f"{r['mode']} / {name}",
                    x["step"]["median"],
                    x["generate"]["median"],
                    x["rest"]["median"],
                    x["completion_tokens"]["median"],
                    x["seconds_per_1k_completion_tokens"]["median"],
                ]
            )
        rows.append(
            [
                f"{r['mode']} ratio ssp/TRL",
                r["ratio_ssp_over_trl"],
                r["ratio_generate"],
                r["ratio_rest"],
                None,
                r["ratio_per_token"],
            ]
        )
    common.print_table(
        f"GRPO step, ssp vs TRL (medians over {base['steps']} steps; target ratio ≤ {TARGET_RATIO})",
        ["mode / framework", "step s", "generate s", "rest s", "compl. tokens", "s per 1k tokens"],
        rows,
    )
    for r in results:
        e = r["equivalence"]
        print(
            f"[{r['mode']}] equivalence: max |Δ log p| = {e['max_abs_logp_diff']:.2e}, loss ssp {e['ssp_loss']:.6f} "
            f"vs TRL {e['trl_loss']:.6f} (|Δ| {e['loss_abs_diff']:.1e})"
        )
    settings = {
        **base,
        "wall_s": time.perf_counter() - t_start,
        "headline_mode": headline_mode,
        "statistic": "median over measured steps; ratio = median ssp step / median TRL step",
        "timing": "TRL step = wall time from the end of the previous ssp step to TRL's on_step_end "
        "(includes its data fetch, generation, scoring, reference and policy passes, optimizer "
        "and logging); ssp step = rollout + reward + grpo_update; generate = time inside the "
        "HF model's generate()",
    }
    payload = common.write_results(
        args.output,
        NAME,
        headline,
        machine,
        settings,
        results,
        targets={"ratio_ssp_over_trl": TARGET_RATIO},
        meets_targets={k: v <= TARGET_RATIO for k, v in headline.items()},
        differences=[
            "TRL computes per-token entropies in every training forward (for its metrics); ssp does not.",
            "TRL scores every position through its fused LM head on CPU (no Triton: prompt positions too, "
            "then masked); ssp asks the model for the completion positions only (logits_to_keep).",
            "TRL pads all sequences of the step to one width; ssp sorts them by length into micro-batches.",
            "TRL's optimizer is AdamW (torch, fused=True, its default); ssp's trainer uses torch AdamW (foreach).",
            "Sampled completions differ between the two (independent random draws); compare "
            "'seconds_per_1k_completion_tokens' when completion lengths differ.",
        ],
    )
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
