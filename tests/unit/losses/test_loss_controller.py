import math

import pytest

from nemo_craft.losses import ControllerState, LossConfig

CRAFT = LossConfig.preset("craft")


def test_initial_state_uses_the_base_weights():
    s = ControllerState.initial(CRAFT)
    assert (s.lam, s.beta, s.ema, s.step) == (0.01, 0.01, 0.5, 0)


def test_update_equations_by_hand():
    s = ControllerState.initial(CRAFT)
    acts = [0.9, 0.8, 0.1, 0.0]
    m = 0.5
    for step, a in enumerate(acts, 1):
        prev_m = m
        m = 0.9 * m + 0.1 * a
        s = s.update(a)
        assert s.ema == pytest.approx(m, abs=1e-15) and s.step == step
        # the weights of the coming step use the EMA after this step (m_{s-1} of the next step)
        assert s.lam == pytest.approx(0.01 * math.exp(2.0 * (m - 0.5)), rel=1e-12)
        assert s.beta == pytest.approx(0.01 * math.exp(-1.0 * (m - 0.5)), rel=1e-12)
        del prev_m
    # asymmetric: activity above target raises lambda twice as fast (in log) as it lowers beta
    up = ControllerState.initial(CRAFT).update(1.0)
    assert math.log(up.lam / 0.01) == pytest.approx(-2.0 * math.log(up.beta / 0.01))


def test_bounds_a_factor_ten_either_side():
    cfg = LossConfig.preset("craft", eta_up=50.0, eta_down=50.0)
    s = ControllerState.initial(cfg)
    for _ in range(40):
        s = s.update(1.0)
    assert s.lam == pytest.approx(0.1) and s.beta == pytest.approx(0.001)
    for _ in range(80):
        s = s.update(0.0)
    assert s.lam == pytest.approx(0.001) and s.beta == pytest.approx(0.1)


def test_switch_off_keeps_the_base_weights_but_tracks_the_ema():
    s = ControllerState.initial(LossConfig.preset("craft", controller=False)).update(1.0)
    assert (s.lam, s.beta) == (0.01, 0.01) and s.ema == pytest.approx(0.55)


def test_state_dict_round_trip_and_errors():
    s = ControllerState.initial(CRAFT).update(0.7).update(0.2)
    fresh = ControllerState.initial(CRAFT)
    fresh.load_state_dict(s.state_dict())
    assert fresh == s and fresh.update(0.4) == s.update(0.4)
    with pytest.raises(ValueError, match="missing \\['ema'\\]"):
        fresh.load_state_dict({"lambda": 1.0, "beta": 1.0, "step": 0})
    with pytest.raises(ValueError, match="gate_activity=1.5"):
        s.update(1.5)
    with pytest.raises(ValueError, match="gate_activity=nan"):
        s.update(float("nan"))
