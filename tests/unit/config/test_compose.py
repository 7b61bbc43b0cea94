"""The composed run config: overrides of the loss's fields on the command line."""

import pytest

from nemo_craft.config import RunConfig, compose


@pytest.mark.parametrize("method", ["craft", "sdar", "grpo_opsd"])
def test_any_loss_field_can_be_overridden_on_top_of_the_preset(method):
    run = RunConfig.from_omegaconf(compose([f"method={method}", "loss.sd_coef=0.5", "loss.controller_bound=3.0"]))
    assert run.loss.sd_coef == 0.5 and run.loss.controller_bound == 3.0
    assert run.loss.name == method  # the rest of the preset stays


def test_the_preset_values_stay_without_an_override():
    assert RunConfig.from_omegaconf(compose(["method=grpo"])).loss.sd_coef == 0.0


def test_an_unknown_loss_key_names_itself():
    with pytest.raises(ValueError, match="loss.no_such_field"):
        compose(["loss.no_such_field=1"])
