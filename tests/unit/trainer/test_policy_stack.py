"""nemo_craft/runtime/policy_stack.py: the policy's vocabulary, and one builder for the trainer and
the evaluator (the stack they run is the same code; tests/e2e compares their runs bit for bit)."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from nemo_craft.runtime.policy_stack import policy_vocab_size

PACKAGE = Path(__file__).resolve().parents[3] / "nemo_craft"


def test_policy_vocabulary_is_the_tokenizers():
    assert policy_vocab_size(SimpleNamespace(vocab_size=104), 128) == 104
    assert policy_vocab_size(SimpleNamespace(vocab_size=128), 128) == 128


def test_a_tokenizer_larger_than_the_model_is_refused_with_the_fix():
    with pytest.raises(
        ValueError, match=r"tokenizer has 130 ids, model.vocab_size=128: .*use the model's own tokenizer"
    ):
        policy_vocab_size(SimpleNamespace(vocab_size=130), 128)


@pytest.mark.parametrize("module", ["trainer/trainer.py", "eval/evaluator.py"])
def test_trainer_and_evaluator_build_the_stack_through_the_builder_only(module):
    """Neither builds a model, a tokenizer, a generator or an episode runner of its own."""
    builders = {"build_model", "load_tokenizer", "Generator", "EpisodeRunner", "initialize_parallel", "load_hf_weights"}
    called = {
        n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
        for n in ast.walk(ast.parse((PACKAGE / module).read_text()))
        if isinstance(n, ast.Call)
    }
    assert not called & builders
    assert "build" in called and "start_episodes" in called
