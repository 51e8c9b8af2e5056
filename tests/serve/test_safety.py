"""SafetyLayer: every rule fires on a crafted input, with the exact output and its count."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from robofm.errors import ConfigError
from robofm.serve.safety import REASONS, SafetyConfig, SafetyLayer
from robofm.sim.env import sim_action_space, sim_state_space

INF = math.inf
XY, Z0, Z1 = 0.28, 0.003, 0.35  # the sim's hand limits, m


def sim_layer(**overrides) -> SafetyLayer:
    """The sim robot's defaults: dx, dy, dz in m/step (|a| <= 0.05), absolute gripper 0..1."""
    overrides.setdefault("watchdog_ms", None)
    cfg = SafetyConfig.from_action_space(sim_action_space(), sim_state_space(), **overrides)
    return SafetyLayer(cfg)


def joint_layer(**kw) -> SafetyLayer:
    """One absolute joint-position dim in [-1, 1] rad."""
    cfg = SafetyConfig(
        low=(-1.0,),
        high=(1.0,),
        delta_dims=(False,),
        max_velocity=(kw.pop("vmax", INF),),
        max_acceleration=(kw.pop("amax", INF),),
        watchdog_ms=None,
        **kw,
    )
    return SafetyLayer(cfg)


STATE = np.array([0.0, 0.0, 0.1, 0.08], np.float32)  # x, y, z (m), gripper width (m)


def test_defaults_from_the_sim_action_space():
    c = SafetyConfig.from_action_space(sim_action_space(), sim_state_space())
    assert c.max_velocity[:3] == (0.05, 0.05, 0.05) and c.max_velocity[3] == INF
    assert c.max_acceleration[:3] == pytest.approx((0.05,) * 3)
    assert c.position_state_dims == (0, 1, 2) and c.position_action_dims == (0, 1, 2)
    assert c.hold_absolute == (0.0, 0.0, 0.0, 1.0)  # gripper open before any command
    assert c.watchdog_ms == pytest.approx(2000.0)  # two chunks of 10 at 10 Hz
    with pytest.raises(ConfigError, match="no field"):
        SafetyConfig.from_action_space(sim_action_space(), max_jerk=1.0)
    with pytest.raises(ConfigError, match="max_velocity"):
        SafetyLayer(SafetyConfig((0.0,), (1.0,), (True,), (1.0, 2.0), (1.0,)))
    with pytest.raises(ConfigError, match="safe_action"):
        sim_layer(safe_action=(0.0, 0.0, 0.5, 1.0))  # dz out of bounds


def test_bounds_clip_each_dimension_and_count_it():
    layer = sim_layer()
    out = layer.filter(np.array([0.2, -0.2, 0.01, 1.5]), STATE)
    np.testing.assert_allclose(out, [0.05, -0.05, 0.01, 1.0], atol=1e-7)
    assert layer.counts["bounds"] == 3
    assert [(e.reason, e.dim) for e in layer.events] == [
        ("bounds", 0),
        ("bounds", 1),
        ("bounds", 3),
    ]
    assert layer.events[0].before == pytest.approx(0.2) and layer.events[0].after == 0.05


def test_velocity_limit_on_delta_dims_is_the_action_magnitude():
    layer = sim_layer(max_velocity=(0.02, 0.02, 0.02, INF))
    out = layer.filter(np.array([0.04, -0.03, 0.01, 0.0]), STATE)
    np.testing.assert_allclose(out, [0.02, -0.02, 0.01, 0.0], atol=1e-7)
    assert layer.counts["velocity"] == 2 and layer.counts["bounds"] == 0


def test_acceleration_limit_on_delta_dims_is_the_change_per_step():
    layer = sim_layer(max_acceleration=(0.01, INF, INF, INF))
    layer.filter(np.array([0.0, 0.0, 0.0, 1.0]), STATE)
    seq = [layer.filter(np.array([0.05, 0.0, 0.0, 1.0]), STATE)[0] for _ in range(6)]
    np.testing.assert_allclose(seq, [0.01, 0.02, 0.03, 0.04, 0.05, 0.05], atol=1e-7)
    assert layer.counts["acceleration"] == 4
    # braking is limited too: from 0.05 to -0.05 takes ten steps of 0.01
    assert layer.filter(np.array([-0.05, 0, 0, 1.0]), STATE)[0] == pytest.approx(0.04)


def test_absolute_dims_limit_first_and_second_difference():
    vel = joint_layer(vmax=0.1)
    vel.reset(initial_action=np.array([0.0]))
    seq = [float(vel.filter(np.array([0.5]))[0]) for _ in range(3)]
    np.testing.assert_allclose(seq, [0.1, 0.2, 0.3], atol=1e-7)  # |a_t - a_t-1| <= 0.1
    assert vel.counts["velocity"] == 3
    acc = joint_layer(amax=0.05)
    acc.reset(initial_action=np.array([0.0]))
    assert acc.filter(np.array([0.1]))[0] == pytest.approx(0.1)  # no a_t-2 yet: unlimited
    # velocity was +0.1/step; stopping at once is a -0.1 change: only -0.05 allowed
    assert acc.filter(np.array([0.1]))[0] == pytest.approx(0.15)
    assert acc.counts["acceleration"] == 1 and acc.counts["velocity"] == 0


def test_workspace_clamps_the_delta_at_the_box_and_lets_the_hand_back_in():
    layer = sim_layer(workspace_low=(-XY, -XY, Z0), workspace_high=(XY, XY, Z1))
    near = np.array([0.27, 0.0, 0.02, 0.08])  # 1 cm from the +x wall, 1.7 cm above the floor
    out = layer.filter(np.array([0.05, 0.0, -0.05, 1.0]), near)
    np.testing.assert_allclose(out[:3], [0.01, 0.0, -0.017], atol=1e-6)
    assert layer.counts["workspace"] == 2
    outside = np.array([0.30, 0.0, 0.1, 0.08])  # already 2 cm outside
    layer.reset()
    assert layer.filter(np.array([0.02, 0, 0, 1.0]), outside)[0] == 0.0  # no further out
    assert layer.filter(np.array([-0.03, 0, 0, 1.0]), outside)[0] == pytest.approx(-0.03)
    lost = np.array([np.nan, 0.0, 0.1, 0.08])  # position unknown: stand still
    np.testing.assert_array_equal(layer.filter(np.array([0.01, 0.01, 0, 1.0]), lost)[:3], 0.0)
    with pytest.raises(ValueError, match="needs the state"):
        layer.filter(np.zeros(4), None)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_actions_are_replaced_by_the_hold_action(bad):
    layer = sim_layer()
    layer.filter(np.array([0.01, 0.0, 0.0, 0.0]), STATE)  # gripper commanded closed
    out = layer.filter(np.array([0.01, bad, 0.0, 1.0]), STATE)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 0.0])  # stop, gripper stays closed
    assert layer.counts["nonfinite"] == 1
    assert (layer.events[-1].reason, layer.events[-1].dim) == ("nonfinite", 1)


def test_watchdog_holds_after_the_deadline_until_a_fresh_action():
    layer = sim_layer(watchdog_ms=100.0)
    layer.reset(now_s=10.0)
    a = np.array([0.01, 0.0, 0.0, 1.0])
    assert layer.filter(a, STATE, now_s=10.05)[0] == pytest.approx(0.01)
    held = layer.filter(a, STATE, now_s=10.15)  # 150 ms > 100 ms without a fresh action
    np.testing.assert_array_equal(held, [0.0, 0.0, 0.0, 1.0])
    assert layer.counts["watchdog"] == 1
    layer.filter(a, STATE, now_s=10.3)
    assert layer.counts["watchdog"] == 2
    layer.mark_fresh(now_s=10.3)
    assert layer.filter(a, STATE, now_s=10.35)[0] == pytest.approx(0.01)
    assert layer.counts["watchdog"] == 2


def test_watchdog_sends_the_configured_safe_action():
    safe = (0.0, 0.0, 0.01, 1.0)  # retreat upwards
    layer = sim_layer(watchdog_ms=50.0, safe_action=safe)
    layer.reset(now_s=0.0)
    np.testing.assert_array_equal(layer.filter(None, STATE, now_s=0.01)[:3], 0.0)  # underrun
    assert layer.counts["no_action"] == 1
    np.testing.assert_allclose(layer.filter(np.zeros(4), STATE, now_s=1.0), safe, atol=1e-7)
    np.testing.assert_allclose(layer.filter(None, STATE, now_s=1.1), safe, atol=1e-7)
    assert layer.counts["watchdog"] == 2 and layer.counts["no_action"] == 1


def test_estop_latches_through_fresh_actions_and_resets_until_released(caplog):
    layer = sim_layer()
    a = np.array([0.02, 0.0, 0.0, 0.0])
    layer.filter(a, STATE)
    with caplog.at_level(logging.WARNING, logger="robofm.serve.safety"):
        layer.estop("operator pressed the button")
        for _ in range(3):
            layer.mark_fresh()
            np.testing.assert_array_equal(layer.filter(a, STATE), [0, 0, 0, 0])
        layer.reset()  # a new episode does not release it
        assert layer.estopped
        layer.filter(a, STATE)
    assert layer.counts["estop"] == 4
    assert "operator pressed the button" in caplog.text and "estop" in caplog.text
    layer.reset_estop()
    assert not layer.estopped
    assert layer.filter(a, STATE)[0] == pytest.approx(0.02)
    assert layer.counts["estop"] == 4


def test_rate_limits_ramp_up_again_after_a_hold():
    layer = sim_layer(max_acceleration=(0.02, 0.02, 0.02, INF))
    a = np.array([0.05, 0.0, 0.0, 1.0])
    for _ in range(4):
        layer.filter(a, STATE)
    layer.filter(None, STATE)  # underrun: stop at once (fallbacks skip the rate rules)
    assert layer.filter(a, STATE)[0] == pytest.approx(0.02)  # restart is acceleration-limited
    summary = layer.summary()
    assert set(summary) == set(REASONS) and summary["no_action"] == 1


def test_events_are_capped_but_counts_stay_exact():
    layer = sim_layer(max_events=5)
    for _ in range(10):
        layer.filter(np.array([1.0, 1.0, 0.0, 0.5]), STATE)
    assert len(layer.events) == 5
    assert layer.counts["bounds"] == 20
