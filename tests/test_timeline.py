"""Timeline: end modes at both ends, reverse, rates, step, seek, bookmarks, determinism, invalid commands."""

import math

import pytest

from gen_server.timeline import Timeline, TimelineCommand, TimelineError


def _cmd(name, value=None):
    return {"name": name, "value": value}


def test_plays_at_real_time_by_default():
    t = Timeline(10.0, 24.0)
    assert t.tau(0.0) == 0.0 and t.tau(2.5) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "mode, rate, now, expected",
    [
        ("loop", 1.0, 12.0, 2.0),  # past the end: wraps to the start
        ("loop", -1.0, 3.0, 7.0),  # reverse past the start: wraps to the end
        ("bounce", 1.0, 12.0, 8.0),  # reflects at the end
        ("bounce", 1.0, 23.0, 3.0),  # and again at the start
        ("bounce", -1.0, 3.0, 3.0),  # reverse from 0: reflects at the start
        ("hold", 1.0, 12.0, 10.0),  # stops at the end
        ("hold", -2.0, 3.0, 0.0),  # stops at the start
    ],
)
def test_end_modes_at_both_ends(mode, rate, now, expected):
    t = Timeline(10.0, 24.0, mode)
    t.apply(_cmd("rate", rate), 0.0)
    assert t.tau(now) == pytest.approx(expected)


def test_hold_forgets_time_at_the_end_when_reversed():
    t = Timeline(10.0, 24.0, "hold")
    t.apply(_cmd("rate", -1.0), 30.0)  # held at 10 since t=10
    assert t.tau(32.0) == pytest.approx(8.0)


def test_bounce_keeps_direction_across_commands():
    t = Timeline(10.0, 24.0, "bounce")
    t.apply(_cmd("rate", 2.0), 16.0)  # at tau 4, going back down after the bounce at 10 s
    assert t.tau(16.0) == pytest.approx(4.0)
    assert t.tau(17.0) == pytest.approx(2.0)


def test_rates_pause_play_and_reverse():
    t = Timeline(10.0, 24.0)
    t.apply(_cmd("rate", 0.25), 0.0)
    assert t.tau(4.0) == pytest.approx(1.0)
    t.apply(_cmd("pause"), 4.0)
    assert t.tau(100.0) == pytest.approx(1.0) and t.state(100.0).paused
    t.apply(_cmd("toggle_pause"), 100.0)
    assert t.tau(104.0) == pytest.approx(2.0)
    t.apply(TimelineCommand("rate", -4.0), 104.0)
    assert t.tau(104.25) == pytest.approx(1.0)
    t.apply(_cmd("play"), 104.25)
    assert not t.state(104.25).paused and t.state(104.25).rate == -4.0


def test_step_pauses_and_moves_one_frame():
    t = Timeline(10.0, 20.0)
    t.apply(_cmd("seek", 5.0), 1.0)
    s = t.apply(_cmd("step", 1), 1.0)
    assert s.paused and s.tau == pytest.approx(5.05)
    assert t.apply(_cmd("step", -1), 50.0).tau == pytest.approx(5.0)
    t.apply(_cmd("seek", 0.0), 50.0)
    assert t.apply(_cmd("step", -1), 50.0).tau == pytest.approx(9.95)  # loop wraps


def test_seek_and_bookmarks():
    t = Timeline(10.0, 24.0)
    t.apply(_cmd("seek", 7.5), 2.0)
    assert t.tau(3.0) == pytest.approx(8.5)
    s = t.apply(_cmd("bookmark"), 3.0)
    assert s.bookmarks == (pytest.approx(8.5),)
    t.apply(_cmd("goto_bookmark", 0), 9.0)
    assert t.tau(9.0) == pytest.approx(8.5)


def test_deterministic_for_same_commands_and_clock():
    script = [(_cmd("rate", 1.5), 0.3), (_cmd("pause"), 1.1), (_cmd("step", 1), 1.2), (_cmd("play"), 2.0), (_cmd("rate", -0.5), 4.0)]
    runs = []
    for _ in range(2):
        t = Timeline(3.0, 30.0, "bounce")
        for c, now in script:
            t.apply(c, now)
        runs.append([t.tau(x / 7) for x in range(100)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "command, match",
    [
        (_cmd("rate", 4.5), "rate"),
        (_cmd("rate", math.nan), "finite"),
        (_cmd("rate", "2"), "number"),
        (_cmd("rate", True), "number"),
        (_cmd("seek", 11.0), "outside"),
        (_cmd("seek", -0.1), "outside"),
        (_cmd("step", 2), "step"),
        (_cmd("goto_bookmark", 0), "no bookmark"),
        (_cmd("fast_forward"), "unknown command"),
        ({"value": 1.0}, "name"),
        ({"name": "play", "speed": 2}, "unknown field"),
        ("play", "dict"),
    ],
)
def test_invalid_commands_raise_and_leave_state(command, match):
    t = Timeline(10.0, 24.0)
    t.apply(_cmd("rate", 2.0), 0.0)
    before = t.state(1.0)
    with pytest.raises(TimelineError, match=match):
        t.apply(command, 1.0)
    assert t.state(1.0) == before
    assert issubclass(TimelineError, ValueError)


def test_invalid_construction_and_clock():
    with pytest.raises(TimelineError):
        Timeline(0.0, 24.0)
    with pytest.raises(TimelineError):
        Timeline(1.0, 24.0, "pingpong")
    with pytest.raises(TimelineError, match="clock"):
        Timeline(1.0, 24.0).tau(math.inf)
