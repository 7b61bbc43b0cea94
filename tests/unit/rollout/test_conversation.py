import pytest

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.rollout import ChatFormat
from tests.unit.rollout._helpers import chatml_tokenizer


def test_pieces_concatenate_to_the_whole_conversation_char_tokenizer():
    tok = CharTokenizer()
    fmt = ChatFormat(tok, system_prompt="be brief", end_of_turn_ids=tok.stop_ids)
    ids = fmt.prompt_ids("grid 0")
    stopped = tok.encode("<action>up</action>")  # ended by the stop string
    ids += stopped + fmt.continuation_ids(stopped, "grid 1")
    eos_ended = tok.encode("<action>left</action>") + [tok.eos_id]  # the policy drew <eos>
    ids += eos_ended + fmt.continuation_ids(eos_ended, "grid 2")
    whole = tok.apply_chat_template(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "grid 0"},
            {"role": "assistant", "content": "<action>up</action>"},
            {"role": "user", "content": "grid 1"},
            {"role": "assistant", "content": "<action>left</action>"},
            {"role": "user", "content": "grid 2"},
        ],
        tokenize=True,
    )
    assert ids == whole
    assert fmt.action_text(eos_ended) == "<action>left</action>"


def test_teacher_prompt_puts_the_privileged_context_first():
    tok = CharTokenizer()
    fmt = ChatFormat(tok, system_prompt="be brief")
    text = tok.decode(fmt.teacher_prompt_ids("grid 0", "plan: up, left\n"))
    assert text == "<|system|>plan: up, left\n\nbe brief<eos><|user|>grid 0<eos><|assistant|>"
    assert (
        tok.decode(ChatFormat(tok).teacher_prompt_ids("g", "plan: up"))
        == "<|system|>plan: up<eos><|user|>g<eos><|assistant|>"
    )


def test_chatml_template_that_rewrites_older_turns(tmp_path):
    """Qwen3-style templates drop the reasoning of older assistant turns, so a whole-conversation
    render differs from what the policy saw; the pieces keep every action verbatim."""
    import transformers  # noqa: F401  (the test extra: missing is a failure, not a skip)

    tok = chatml_tokenizer(str(tmp_path))
    im_end = tok.encode("<|im_end|>")[0]
    fmt = ChatFormat(tok, end_of_turn_ids=tok.stop_ids)
    ids = fmt.prompt_ids("task + grid 0")
    action = tok.encode("<think>push</think> <action>up</action>") + [im_end]
    ids += action + fmt.continuation_ids(action, "grid 1")
    assert tok.decode(ids) == (
        "<|im_start|>user\ntask + grid 0<|im_end|>\n<|im_start|>assistant\n"
        "<think>push</think> <action>up</action><|im_end|>\n"
        "<|im_start|>user\ngrid 1<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.action_text(action) == "<think>push</think> <action>up</action>"
    # a stop-string ending gets the template's end of turn from the continuation
    action = tok.encode("<action>up</action>")
    assert tok.decode(fmt.continuation_ids(action, "g")).startswith("<|im_end|>\n<|im_start|>user\ng")


def test_a_template_that_alters_replies_is_refused():
    class Mangling(CharTokenizer):
        def apply_chat_template(self, messages, *, add_generation_prompt=True, tokenize=False):
            messages = [dict(m, content=m["content"].upper()) for m in messages]
            return super().apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize)

    with pytest.raises(ValueError, match="verbatim"):
        ChatFormat(Mangling()).continuation_ids([5], "obs")
