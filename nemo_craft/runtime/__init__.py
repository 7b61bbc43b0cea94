"""The runtime layer: what training and evaluation both run (the policy stack, checkpoints, the
reference policy). It sits above rollout and below trainer, eval and planner."""
