import functools

import pytest
import torch

from nemo_craft.envs import env_factory, make_env
from nemo_craft.envs.faulty import make_faulty
from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.rollout import EpisodeRunner, collate_teacher, collate_trajectories
from nemo_craft.rollout.config import GenerationConfig, RolloutConfig
from tests.unit.rollout._helpers import ScriptedPolicy, action_spans, check_layout

TOK = CharTokenizer()
SEEDS = [3, 4, 5]
SOKOBAN = dict(template="compact", max_turns=12)


def _expert_plans():
    """First user message of each task -> the solver's plan (as the actions the env accepts)."""
    plans = {}
    for seed in SEEDS:
        env = make_env("sokoban", **SOKOBAN)
        env.reset(seed)
        plans[env.render_prompt()] = env.expert_actions()
    return plans


def _expert(plans):
    def answer(prompt_text, row):
        first_user = prompt_text.split("<|user|>", 1)[1].split("<eos>", 1)[0]
        turn = prompt_text.count("<|assistant|>") - 1
        # "up" (the compact template's expert answer) or "<action>up</action>"
        word = plans[first_user][turn].removeprefix("<action>").removesuffix("</action>")
        if row % 2:  # a bare word ended by EOS
            return TOK.encode(word) + [TOK.eos_id]
        return TOK.encode(f"<action>{word}</action> trailing")  # ended by the stop string

    return answer


def _runner(policy, max_new_tokens=32, **cfg):
    config = RolloutConfig(**(dict(group_size=2) | cfg), generation=GenerationConfig(max_new_tokens=max_new_tokens))
    return EpisodeRunner(policy, TOK, env_factory("sokoban", **SOKOBAN), config)


def test_expert_policy_solves_every_task_with_one_batched_call_per_turn():
    plans = _expert_plans()
    policy = ScriptedPolicy(TOK, _expert(plans))
    runner = _runner(policy)
    trajectories = runner.run(SEEDS, seed=0, group_offset=10)
    runner.close()
    assert [(t.task_seed, t.group_id, t.sibling_index) for t in trajectories] == [
        (s, 10 + n, g) for n, s in enumerate(SEEDS) for g in range(2)
    ]
    longest = max(len(p) for p in plans.values())
    assert len(policy.calls) == longest
    running = [sum(len(p) > k for p in plans.values()) * 2 for k in range(longest)]
    assert [len(c["prompts"]) for c in policy.calls] == running  # every running episode, every turn
    assert len({c["seed"] for c in policy.calls}) == longest
    assert {r.finish_reason for t in trajectories for r in t.turns} == {"eos", "stop"}
    for tr in trajectories:
        assert tr.success and tr.reward == pytest.approx(1.0) and tr.finish_reason == "done"
        assert tr.n_invalid == 0 and tr.error is None
        assert tr.privileged_context and tr.num_turns == len(tr.turns)
        check_layout(tr, policy.calls)
        actions = [TOK.decode(tr.token_ids[a:b]) for a, b in action_spans(tr)]
        assert all(a.endswith("</action>") or a.endswith("<eos>") for a in actions)
        assert [r.action for r in tr.turns] == [a.replace("<eos>", "") for a in actions]
        assert [r.finish_reason for r in tr.turns] == ["eos" if a.endswith("<eos>") else "stop" for a in actions]


def test_token_budgets_and_turn_limits_end_episodes():
    def jump(text, row):
        return TOK.encode("<action>jump</action>")  # 21 tokens, invalid

    policy = ScriptedPolicy(TOK, jump)
    trajectories = _runner(policy, max_new_tokens=8, max_tokens_per_episode=20).run([3], seed=1)
    assert [c["budgets"] for c in policy.calls] == [[8, 8], [8, 8], [4, 4]]
    for tr in trajectories:
        assert tr.finish_reason == "token_budget" and tr.num_turns == 3
        assert [r.finish_reason for r in tr.turns] == ["length"] * 3
        assert tr.n_invalid == 3 and tr.reward == pytest.approx(-0.3)
        assert tr.num_action_tokens == 20
        check_layout(tr, policy.calls)

    policy = ScriptedPolicy(TOK, jump)
    trajectories = _runner(policy, max_turns=2).run([3], seed=1)
    assert all(t.finish_reason == "max_turns" and t.num_turns == 2 for t in trajectories)

    policy = ScriptedPolicy(TOK, jump, max_sequence_length=60)
    trajectories = _runner(policy).run([3], seed=1)
    for tr in trajectories:
        assert tr.finish_reason == "context" and len(tr) <= 60
        check_layout(tr, policy.calls)
    assert all(c["budgets"][0] <= 60 - len(c["prompts"][0]) for c in policy.calls)


def test_an_environment_failure_ends_only_that_episode():
    policy = ScriptedPolicy(TOK, lambda text, row: TOK.encode("go") + [TOK.eos_id])
    runner = EpisodeRunner(
        policy, TOK, functools.partial(make_faulty, mode="raise", fail_seeds=(1,)), RolloutConfig(group_size=1)
    )
    bad, good = runner.run([1, 2], seed=0)
    runner.close()
    assert bad.finish_reason == "env_error" and "deliberate failure" in bad.error and bad.num_turns == 1
    assert good.finish_reason == "done" and good.success and good.num_turns == 2 and good.error is None


def test_teacher_view_of_rollouts_aligns_with_the_student():
    policy = ScriptedPolicy(TOK, _expert(_expert_plans()))
    trajectories = _runner(policy).run(SEEDS, seed=0)
    student = collate_trajectories(trajectories, pad_id=TOK.pad_id)
    teacher = collate_teacher(trajectories, pad_id=TOK.pad_id)
    mask = student.loss_mask
    assert mask.sum() == sum(t.num_action_tokens for t in trajectories)
    assert torch.equal(teacher.targets.gather(1, teacher.gather_index)[mask], student.targets[mask])
    for b, tr in enumerate(trajectories):
        text = TOK.decode(teacher.input_ids[b, : teacher.lengths[b]].tolist())
        assert text.startswith(f"<|system|>plan: {tr.privileged_context}")
        assert TOK.decode(tr.token_ids[tr.prompt_length :]) in text + TOK.decode(tr.token_ids[-1:])
        # every action token keeps its turn index and position in the student batch
        spans = action_spans(tr)
        for k, (start, end) in enumerate(spans):
            assert student.turn_ids[b, start - 1 : end - 1].tolist() == [k] * (end - start)
            assert student.pos_in_turn[b, start - 1 : end - 1].tolist() == list(range(end - start))
