"""models: megatron-core GPTModel providers and everything that maps a model in or out.

- ``families``        the model-family registry: one record per Hugging Face architecture (flags,
                      config.json's model_type and class, checkpoint tensor names)
- ``config``          ModelConfig (architecture, validated; from/to Hugging Face config.json)
- ``hf_config``       config.json <-> ModelConfig, model=from_hf, the start-up weights check
- ``provider``        build_model: GPTModel chunks per pipeline/virtual-pipeline stage (TE or local spec),
                      with the megatron-core fixes of ``nemo_craft.parallel.megatron_fixes`` applied
- ``norm``            RMSNorm of the local spec (sequence parallel without TE/apex)
- ``hf_mapping``      megatron <-> Hugging Face names and TP layouts (pure tensor code)
- ``hf``              safetensors import (per-rank slices) and export (gather to rank 0)
- ``tokenizer``       Hugging Face tokenizers and the built-in character tokenizer
- ``tiny_hf``         tiny random Hugging Face checkpoints for tests
"""
