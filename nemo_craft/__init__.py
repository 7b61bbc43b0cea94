"""nemo_craft: CRAFT (counterfactual credit for self-distilled agentic RL) on megatron-core."""

__version__ = "0.1.0"
