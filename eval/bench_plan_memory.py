"""How close is `dpo plan`'s memory estimate to the real peak of a DPO training step on CPU?

For each case this runs DPO training steps the way TRL 1.16's DPOTrainer does them, in a fresh Python
process so that peaks do not mix: the policy forwards chosen and rejected concatenated through TRL's fused
LM head, the reference forwards the same batch under no_grad (LoRA: the policy with its adapter disabled;
full fine-tuning: a frozen copy), the sigmoid DPO loss is backpropagated, gradients are clipped to norm 1
and fused AdamW steps (the Trainer's default optimizer). Two steps, so the optimizer states exist. With
gradient accumulation (the "-ga2" cases) each step is the Trainer's: the loss of each micro-batch is divided by
the number of micro-batches and backpropagated, and the gradients are clipped and the optimizer steps after the
last one, so the gradients of the earlier micro-batches are alive through the later ones.

Measured: the process's peak resident memory (VmHWM in /proc/self/status) minus its resident memory just
before the model was created, so the Python, torch and transformers runtime is not counted and the weights
are. The high-water mark is reset after the model is built (/proc/self/clear_refs) so a loading transient
does not count. Estimated: `dpo.plan.build_plan(...)` with device="cpu" for the same options.

Each case runs twice. Once with MALLOC_MMAP_THRESHOLD_=65536, so glibc serves every allocation over 64 KiB
with its own mmap and returns it to the OS when freed: resident memory then follows the memory actually in
use, which is what the plan estimates and what the tolerance applies to. Once with glibc's defaults, as a
plain CPU run would: glibc raises its mmap threshold as tensors are freed and then keeps freed memory on its
heap, so resident memory grows above the memory in use; that column shows by how much.

Cases: a tiny random Llama built here (LoRA, full, full with gradient checkpointing, LoRA in bfloat16) and
the embedded SmolLM2-135M-Instruct (LoRA, full, LoRA with gradient checkpointing; 2 pairs x 128 tokens), and
LoRA and full fine-tuning with 2 micro-batches per optimizer step. About 11 minutes on 2 CPU cores (the first
run also converts the embedded GGUF once, ~30 s). Torch runs 2 threads, or OMP_NUM_THREADS where it is set.

    python eval/bench_plan_memory.py            # all cases; writes eval/results/plan_memory.{json,md}
    python eval/bench_plan_memory.py --only tiny-lora tiny-full   # reruns these, keeps the other rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "eval" / "results"
TOLERANCE = 0.10  # |estimate / measured - 1| allowed (memory in use), stated in docs/plan.md

TINY_CONFIG = {
    "model_type": "llama",
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# name -> (model, batch pairs, seq_len, LoRA rank or None, dtype, gradient checkpointing, micro-batches per step)
CASES = {
    "tiny-lora": ("tiny", 4, 256, 16, "float32", False, 1),
    "tiny-full": ("tiny", 4, 256, None, "float32", False, 1),
    "tiny-full-ckpt": ("tiny", 4, 256, None, "float32", True, 1),
    "tiny-lora-bf16": ("tiny", 4, 256, 16, "bfloat16", False, 1),
    "smollm2-lora": ("smollm2-135m-instruct", 2, 128, 16, "float32", False, 1),
    "smollm2-full": ("smollm2-135m-instruct", 2, 128, None, "float32", False, 1),
    "smollm2-lora-ckpt": ("smollm2-135m-instruct", 2, 128, 16, "float32", True, 1),
    "tiny-lora-ga2": ("tiny", 4, 256, 16, "float32", False, 2),
    "tiny-full-ga2": ("tiny", 4, 256, None, "float32", False, 2),
    "smollm2-full-ga2": ("smollm2-135m-instruct", 2, 128, None, "float32", False, 2),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
STEPS = 2  # the second step is the steady state: optimizer states exist, nothing new appears later


def _status(key: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def run_case(name: str, tiny_dir: str) -> dict:
    """One case, in this (fresh) process. Returns the measurement."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from dpo.models import load_model

    model_name, pairs, seq_len, rank, dtype, checkpointing, accumulation = CASES[name]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)
    vocab = TINY_CONFIG["vocab_size"] if model_name == "tiny" else 49152
    # A DPO batch: [chosen; rejected], padded to seq_len, loss on the completion (last 3/4) only
    ids = torch.randint(3, vocab, (2 * pairs, seq_len))
    mask = torch.ones_like(ids)
    mask[0, -seq_len // 8 :] = 0
    mask[pairs, -seq_len // 16 :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : seq_len // 4] = -100

    before = _status("VmRSS")
    if model_name == "tiny":
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=getattr(torch, dtype))
    else:
        model = load_model(model_name, dtype=dtype)
    if rank is None:
        reference = AutoModelForCausalLM.from_config(model.config, dtype=getattr(torch, dtype))
        reference.load_state_dict(model.state_dict())
        reference.eval().requires_grad_(False)
        add_fused_lm_head(reference)
        policy = model
    else:
        reference = None
        policy = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS)))
    add_fused_lm_head(
        policy.get_base_model() if rank else policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1")
    )
    if checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if rank:
            policy.enable_input_require_grads()
    policy.train()
    for module in policy.modules():  # TRL's disable_dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    reset = _reset_peak()

    step_times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        for _ in range(accumulation):  # the Trainer's micro-batches: each loss scaled, backward, no step yet
            out = policy(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            logps = out.log_probs.sum(-1)
            with torch.no_grad():
                if reference is None:
                    with policy.disable_adapter():
                        ref = policy(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
                else:
                    ref = reference(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            ref_logps = ref.log_probs.sum(-1)
            chosen, rejected = logps.chunk(2)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            loss = -F.logsigmoid(0.1 * ((chosen - ref_chosen) - (rejected - ref_rejected))).mean()
            (loss / accumulation).backward()
            del out, ref, logps, ref_logps, loss
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - start)
    return {
        "measured_bytes": _status("VmHWM") - before,
        "peak_reset": reset,
        "step_seconds": round(step_times[-1], 2),  # the steady-state step; noisy on a shared CPU, not tabled
        "threads": torch.get_num_threads(),
    }


def estimate(name: str, tiny_dir: str) -> dict:
    from dpo.plan import PlanOptions, build_plan

    model_name, pairs, seq_len, rank, dtype, checkpointing, accumulation = CASES[name]
    source = str(Path(tiny_dir) / "config.json") if model_name == "tiny" else model_name
    options = PlanOptions(
        dtype=dtype,
        batch_size=pairs,
        gradient_accumulation_steps=accumulation,
        seq_len=seq_len,
        lora_rank=rank,
        lora_targets=LORA_TARGETS,
        gradient_checkpointing=checkpointing,
        device="cpu",
    )
    plan = build_plan(source, options)
    return {"estimate_bytes": plan.memory["total"], "plan": plan.to_dict(), "summary": plan.summary_line()}


def write_tiny_model(path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = dict(TINY_CONFIG)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config)).save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="run these cases only")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # worker mode: one case, JSON on stdout
    parser.add_argument("--tiny-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.tiny_dir)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    names = args.only or list(CASES)
    kept = _rows_kept(names)
    measured_with = {key: _meta()[key] for key in ("versions", "machine")}
    if any(CASES[n][0] != "tiny" for n in names):
        from dpo.models import convert_embedded

        convert_embedded("smollm2-135m-instruct")  # once, outside the measured processes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_model(Path(tmp))
        for name in names:
            row = {"case": name, **estimate(name, tmp), **measured_with}
            for malloc, env in (("", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("_default_malloc", {})):
                cmd = [sys.executable, __file__, "--case", name, "--tiny-dir", tmp]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env})
                if proc.returncode != 0:
                    sys.exit(f"case {name} failed:\n{proc.stderr[-3000:]}")
                measured = json.loads(proc.stdout.strip().splitlines()[-1])
                row.update({f"{key}{malloc}": value for key, value in measured.items()})
                row[f"ratio{malloc}"] = round(row["estimate_bytes"] / row[f"measured_bytes{malloc}"], 3)
            row["within_tolerance"] = abs(row["ratio"] - 1) <= TOLERANCE
            rows.append(row)
            mib = {
                key: row[key] / 2**20 for key in ("estimate_bytes", "measured_bytes", "measured_bytes_default_malloc")
            }
            print(
                f"{name:16s} estimate {mib['estimate_bytes']:6.0f} MiB | measured {mib['measured_bytes']:6.0f} MiB, "
                f"ratio {row['ratio']:.2f} | default malloc {mib['measured_bytes_default_malloc']:6.0f} MiB, "
                f"ratio {row['ratio_default_malloc']:.2f}",
                flush=True,
            )
    measured = {row["case"]: row for row in kept + rows}
    write_results([measured[name] for name in CASES if name in measured])


def _meta() -> dict:
    import platform

    import torch
    import transformers
    import trl

    return {
        "command": "python eval/bench_plan_memory.py",
        "tolerance": TOLERANCE,
        "steps_per_case": STEPS,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def _rows_kept(names: list[str]) -> list[dict]:
    """The recorded rows of the cases not rerun: --only merges into the results. Each row keeps the versions,
    machine and threads it was measured with (rows recorded before rows carried them: the file's)."""
    path = RESULTS / "plan_memory.json"
    if not path.exists() or set(names) >= set(CASES):
        return []
    recorded = json.loads(path.read_text())
    if recorded.get("steps_per_case") != STEPS:
        sys.exit(f"{path} was measured with {recorded.get('steps_per_case')} steps per case, not {STEPS}: rerun all")
    # before rows carried them, the file held one set of versions, one machine, and 2 threads
    measured_with = {"versions": recorded.get("versions"), "machine": recorded.get("machine"), "threads": 2}
    return [
        {**row, **{key: row.get(key, value) for key, value in measured_with.items()}}
        for row in recorded["cases"]
        if row["case"] in CASES and row["case"] not in names
    ]


def _measured_with(row: dict) -> str:
    v = row["versions"]
    return (
        f"torch {v['torch']}, transformers {v['transformers']}, TRL {v['trl']}, {row['machine']}, "
        f"{row['threads']} torch thread{'s' if row['threads'] > 1 else ''}"
    )


def write_results(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {key: value for key, value in _meta().items() if key in ("command", "tolerance", "steps_per_case")}
    (RESULTS / "plan_memory.json").write_text(json.dumps({**meta, "cases": rows}, indent=2) + "\n")
    lines = [
        f"| case | setup | estimate (MiB) | measured peak (MiB) | estimate / measured | within ±{TOLERANCE:.0%} "
        "| peak phase (plan) | glibc defaults: peak RSS (MiB) | estimate / RSS |",
        "|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        model, pairs, seq_len, rank, dtype, ckpt, accumulation = CASES[r["case"]]
        setup = f"{model}, {'LoRA r=' + str(rank) if rank else 'full'}, {dtype}, {pairs} pairs x {seq_len} tokens" + (
            ", grad. ckpt" if ckpt else ""
        )
        setup += f", grad. accum. {accumulation}" if accumulation > 1 else ""
        lines.append(
            f"| {r['case']} | {setup} | {r['estimate_bytes'] / 2**20:.0f} | {r['measured_bytes'] / 2**20:.0f} | "
            f"{r['ratio']:.2f} | {'yes' if r['within_tolerance'] else 'NO'} | {r['plan']['peak_phase']} | "
            f"{r['measured_bytes_default_malloc'] / 2**20:.0f} | {r['ratio_default_malloc']:.2f} |"
        )
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(_measured_with(r), []).append(r["case"])
    if len(groups) == 1:
        header = f"Generated by `{meta['command']}` ({next(iter(groups))})."
    else:  # rows merged from runs with --only
        header = (
            f"Generated by `{meta['command']}`: "
            + "; ".join(f"{', '.join(cases)} measured with {with_}" for with_, cases in groups.items())
            + "."
        )
    (RESULTS / "plan_memory.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
