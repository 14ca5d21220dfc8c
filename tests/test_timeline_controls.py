"""The pure controller -> timeline mapping (no OpenXR, no GL)."""

import numpy as np
import pytest

from gen_server import cameras
from xr_client.timeline_controls import ControlsConfig, HandState, TimelineControls, stick_rate, trigger_rate

CFG = ControlsConfig(max_rate=4.0, dead_zone=0.1)


def test_trigger_rate_grows_with_pull_up_to_max():
    assert trigger_rate(0.05, 0.0, CFG) is None
    rates = [trigger_rate(p, 0.0, CFG) for p in (0.2, 0.5, 0.8, 1.0)]
    assert all(a < b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(4.0)
    assert trigger_rate(0.55, 0.0, CFG) == pytest.approx(4.0 * 0.25)  # half the travel past the dead zone
    assert trigger_rate(0.0, 1.0, CFG) == pytest.approx(-4.0)
    assert trigger_rate(1.0, 1.0, CFG) == pytest.approx(0.0)
    assert stick_rate(-1.0, CFG) == pytest.approx(-4.0) and stick_rate(0.05, CFG) is None


def test_triggers_send_rates_and_restore_base_rate():
    tc = TimelineControls(CFG)
    assert tc.update(HandState(), HandState()).controls == []
    out = tc.update(HandState(), HandState(trigger=1.0))
    assert out.controls == [("rate", 4.0, None)]
    assert tc.update(HandState(), HandState(trigger=1.0)).controls == []  # no repeat while unchanged
    out = tc.update(HandState(trigger=1.0), HandState())
    assert out.controls == [("rate", -4.0, None)]
    out = tc.update(HandState(), HandState())
    assert out.controls == [("rate", 1.0, None)]


def test_buttons_toggle_pause_bookmark_with_haptics_on_edges_only():
    tc = TimelineControls(CFG)
    out = tc.update(HandState(), HandState(primary=True))
    assert out.controls == [("toggle_pause", None, None)] and out.haptics == ["right"] and tc.paused
    assert tc.update(HandState(), HandState(primary=True)).controls == []  # held, not a new press
    out = tc.update(HandState(secondary=True), HandState())
    assert out.controls == [("bookmark", None, "bookmark-1")] and out.haptics == ["left"]
    out = tc.update(HandState(menu=True), HandState())
    assert out.toggle_hud and out.controls == []


def test_trigger_while_paused_plays_then_pauses_again():
    tc = TimelineControls(CFG, paused=True)
    out = tc.update(HandState(), HandState(trigger=1.0))
    assert out.controls == [("play", None, None), ("rate", 4.0, None)]
    out = tc.update(HandState(), HandState())
    assert out.controls == [("pause", None, None), ("rate", 1.0, None)]


def test_one_hand_grab_moves_world_with_hand_and_two_hands_scale():
    tc = TimelineControls(CFG)
    start = cameras.pose_to_matrix([0.2, 1.2, -0.4], [0, 0, 0, 1])
    tc.update(HandState(), HandState(grip=1.0, aim=start))
    moved = cameras.pose_to_matrix([0.5, 1.2, -0.4], cameras.matrix_to_quat(cameras.yaw_pitch_to_matrix(0.3)))
    out = tc.update(HandState(), HandState(grip=1.0, aim=moved))
    # The world point that was at the hand is at the hand again.
    grabbed_virtual = start[:, 3]  # the offset was identity at grab time
    assert np.allclose(out.stage_from_virtual @ grabbed_virtual, moved[:, 3])
    assert np.isclose(np.degrees(np.arctan2(out.stage_from_virtual[0, 2], out.stage_from_virtual[0, 0])), 0.3 * 180 / np.pi)
    # Two hands: pulling them to twice the distance halves world metres per stage metre.
    l0 = cameras.pose_to_matrix([-0.1, 1.2, -0.4], [0, 0, 0, 1])
    r0 = cameras.pose_to_matrix([0.1, 1.2, -0.4], [0, 0, 0, 1])
    tc.update(HandState(grip=1.0, aim=l0), HandState(grip=1.0, aim=r0))
    l1 = cameras.pose_to_matrix([-0.2, 1.2, -0.4], [0, 0, 0, 1])
    r1 = cameras.pose_to_matrix([0.2, 1.2, -0.4], [0, 0, 0, 1])
    out = tc.update(HandState(grip=1.0, aim=l1), HandState(grip=1.0, aim=r1))
    assert out.controls == [("scale", pytest.approx(0.5), None)]
