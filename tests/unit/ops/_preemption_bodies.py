"""Bodies run in spawned processes by test_preemption.py (importable by reference)."""

from __future__ import annotations

import os
import signal
import sys
import time


def loop_until_stopped(max_steps: int, step_seconds: float) -> int:
    """A training loop in miniature, shaped like RLTrainer.fit: each step prints its start and
    end; the stop is checked only at step boundaries; exit(step) after "checkpointing"."""
    from nemo_craft.trainer.preemption import PreemptionHandler

    preemption = PreemptionHandler()
    print("ready", flush=True)
    for step in range(1, max_steps + 1):
        print(f"start {step}", flush=True)
        time.sleep(step_seconds)
        print(f"end {step}", flush=True)
        if preemption.should_stop():
            print(f"checkpoint {step} {preemption.reason}", flush=True)
            preemption.exit(step, checkpoint=f"ckpt/step{step}")
    print("finished", flush=True)
    return 0


def ranks_agree_on_stop(signal_rank: int, signal_step: int, max_steps: int) -> tuple:
    """Inside run_distributed: only ``signal_rank`` receives a real SIGUSR1 (from itself) during
    step ``signal_step``; every rank must stop after that same step."""
    import torch.distributed as dist

    from nemo_craft.trainer.preemption import PreemptionHandler

    with PreemptionHandler() as preemption:
        for step in range(1, max_steps + 1):
            if step == signal_step and dist.get_rank() == signal_rank:
                os.kill(os.getpid(), signal.SIGUSR1)
            if preemption.should_stop():
                return step, preemption.reason
    return None, None


if __name__ == "__main__":
    sys.exit(loop_until_stopped(int(sys.argv[1]), float(sys.argv[2])))
