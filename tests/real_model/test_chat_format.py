"""The project's chat formatting on SmolLM2's real tokenizer and ChatML template: the pieces a
rollout is built from (prompt, sampled actions, continuations) are exactly the ids of the
tokenizer's own ``apply_chat_template`` for the whole conversation, for the student and for the
teacher's privileged view, so student and teacher action tokens line up one to one."""

from __future__ import annotations

import pytest

from nemo_craft.models.tokenizer import load_tokenizer
from nemo_craft.rollout import ChatFormat

TASK = "You push boxes onto targets.\n#####\n#@$.#\n#####\nAnswer with <action>up|down|left|right</action>."
OBSERVATIONS = ["#####\n# @*#\n#####", "#####\n#  @#\n#####\nSolved? Not yet.", "Invalid action: jump"]
ACTIONS = [
    "<think>The box is right of me.</think> <action>right</action>",
    "<action>left</action>",
    "Ünïcode — émojis 🙂 and  double  spaces <action>up</action>",
]
PRIVILEGED = "Privileged plan: right, then left.\n"


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer_dir):
    return load_tokenizer(None, hf_path=smollm2_tokenizer_dir)


def _template_ids(tok, messages, *, add_generation_prompt=True):
    """Ids from the Hugging Face tokenizer's own apply_chat_template (transformers 5 returns a
    BatchEncoding, 4.x a list)."""
    out = tok.hf.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _rollout(fmt, tok, first_prompt_ids, n_turns, *, end_with_eot):
    """The token sequence a rollout builds: prompt, then per turn the sampled action (ending
    with <|im_end|> when the policy drew it) and the continuation with the next observation."""
    ids = list(first_prompt_ids)
    im_end = tok.hf.convert_tokens_to_ids("<|im_end|>")
    for action, observation in zip(ACTIONS[:n_turns], OBSERVATIONS[:n_turns]):
        sampled = tok.encode(action) + ([im_end] if end_with_eot else [])
        ids += sampled + fmt.continuation_ids(sampled, observation)
    return ids


def _conversation(system, n_turns):
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": TASK})
    for action, observation in zip(ACTIONS[:n_turns], OBSERVATIONS[:n_turns]):
        messages += [{"role": "assistant", "content": action}, {"role": "user", "content": observation}]
    return messages


def test_special_tokens_and_stop_ids(tok):
    assert tok.vocab_size == 49152
    assert tok.hf.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.eos_id == 2  # <|im_end|>: generation stops at the end of the assistant's turn
    assert set(tok.stop_ids) == {0, 2}
    assert tok.encode("hi") == [6004]  # no BOS added: the template carries its own markers


@pytest.mark.parametrize("system", [None, "Be brief."], ids=["default_system", "own_system"])
def test_prompt_is_the_templates_ids(tok, system):
    fmt = ChatFormat(tok, system_prompt=system, end_of_turn_ids=tok.stop_ids)
    assert fmt.prompt_ids(TASK) == _template_ids(tok, _conversation(system, 0))
    if system is None:  # SmolLM2's template adds its default system message
        assert tok.decode(fmt.prompt_ids(TASK)).startswith("<|im_start|>system\nYou are a helpful AI assistant")


@pytest.mark.parametrize("end_with_eot", [True, False], ids=["sampled_im_end", "stopped_by_string"])
@pytest.mark.parametrize("system", [None, "Be brief."], ids=["default_system", "own_system"])
def test_multi_turn_rollout_is_the_templates_ids(tok, system, end_with_eot):
    fmt = ChatFormat(tok, system_prompt=system, end_of_turn_ids=tok.stop_ids)
    for n_turns in (1, len(ACTIONS)):
        ids = _rollout(fmt, tok, fmt.prompt_ids(TASK), n_turns, end_with_eot=end_with_eot)
        assert ids == _template_ids(tok, _conversation(system, n_turns)), n_turns


def test_action_text_round_trips_through_the_template(tok):
    fmt = ChatFormat(tok, end_of_turn_ids=tok.stop_ids)
    for action in ACTIONS:
        assert fmt.action_text(tok.encode(action) + [tok.eos_id]) == action


@pytest.mark.parametrize("system", [None, "Be brief."], ids=["default_system", "own_system"])
def test_teacher_view_aligns_with_the_student(tok, system):
    fmt = ChatFormat(tok, system_prompt=system, end_of_turn_ids=tok.stop_ids)
    student_prompt = fmt.prompt_ids(TASK)
    teacher_prompt = fmt.teacher_prompt_ids(TASK, PRIVILEGED)
    student = _rollout(fmt, tok, student_prompt, len(ACTIONS), end_with_eot=True)
    teacher = _rollout(fmt, tok, teacher_prompt, len(ACTIONS), end_with_eot=True)
    teacher_system = PRIVILEGED if system is None else f"{PRIVILEGED.rstrip()}\n\n{system}"
    assert teacher == _template_ids(tok, _conversation(teacher_system, len(ACTIONS)))
    # Student token s is teacher token s + offset, for every token after the prompts.
    offset = len(teacher_prompt) - len(student_prompt)
    assert len(teacher) - len(student) == offset
    assert all(student[s] == teacher[s + offset] for s in range(len(student_prompt), len(student)))
    assert tok.decode(teacher_prompt).startswith(f"<|im_start|>system\n{teacher_system}<|im_end|>")
