"""CheckpointConfig validation, the save schedule, and the megatron bug-3 fix helpers on a bare
torch Adam (no ranks)."""

import pytest
import torch

from nemo_craft.parallel import megatron_fixes as fixes
from nemo_craft.runtime.checkpoint import CheckpointManager
from nemo_craft.runtime.config import CheckpointConfig


def test_defaults_are_valid_and_match_the_yaml_keys():
    cfg = CheckpointConfig()
    assert (cfg.dir, cfg.save_every, cfg.keep_last, cfg.resume, cfg.format) == (None, 0, 2, None, "torch_dist")
    CheckpointConfig(dir="/x", save_every=10, keep_last=None, resume="auto")
    CheckpointConfig(resume="/somewhere/step_000010")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(save_every=-1), "save_every=-1"),
        (dict(save_every=True, dir="/x"), "save_every=True"),
        (dict(keep_last=0), "keep_last=0"),
        (dict(format="torch"), r"format='torch': allowed values are \('torch_dist',\)"),
        (dict(resume=""), "resume=''"),
        (dict(save_every=5), "needs checkpoint.dir"),
        (dict(resume="auto"), "resume='auto' needs checkpoint.dir"),
    ],
)
def test_invalid_values_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CheckpointConfig(**kwargs)


def test_should_save():
    manager = CheckpointManager(CheckpointConfig(dir="/x", save_every=3))
    assert [s for s in range(1, 10) if manager.should_save(s)] == [3, 6, 9]
    assert not CheckpointManager(CheckpointConfig(dir="/x")).should_save(3)
    assert fixes.optimizer_fixes_applied()  # the manager installs the bug-3 fix


class _Wrapped:
    """The one attribute of megatron's DistributedOptimizer the helpers use."""

    def __init__(self, inner):
        self.optimizer = inner


def test_init_empty_adam_state_equals_a_first_step():
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    grads = [torch.randn(3), torch.randn(2, 2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1)
    initialised = torch.optim.AdamW(twins, lr=0.1, weight_decay=0.1)
    assert fixes.init_empty_adam_state(_Wrapped(initialised))
    assert not fixes.init_empty_adam_state(_Wrapped(initialised))  # only an empty state
    steps = [s["step"] for s in initialised.state.values()]
    assert steps[0] is not steps[1] and [float(s) for s in steps] == [0.0, 0.0]
    for opt, ps in ((plain, params), (initialised, twins)):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
    assert [float(s["step"]) for s in initialised.state.values()] == [1.0, 1.0]
    assert not fixes.init_empty_adam_state(_Wrapped(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1)))


def test_shared_step_is_split_per_parameter():
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    opt = torch.optim.Adam(params)
    shared = torch.tensor(5.0)
    for p in params:  # what megatron's DistributedOptimizer.load_state_dict leaves behind
        opt.state[p] = {"step": shared, "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}
    assert fixes.give_each_param_its_own_step(_Wrapped(opt)) == 2
    for p in params:
        p.grad = torch.ones(2)
    opt.step()
    assert [float(s["step"]) for s in opt.state.values()] == [6.0, 6.0, 6.0]  # not 8
