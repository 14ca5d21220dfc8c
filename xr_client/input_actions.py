"""OpenXR actions: one action set, suggested bindings for the common controllers, read into HandStates.

Bindings (per hand unless noted): trigger value; grip (squeeze) value or click; thumbstick (trackpad on
Vive); primary = A/X (Touch, Index), menu (Vive, WMR), select (simple); secondary = B/Y, trackpad click;
HUD = menu (Touch left, simple), thumbstick click; aim pose; haptic output. The mapping from these to
timeline controls is timeline_controls.py (pure, tested without a runtime).
"""

from __future__ import annotations

import logging

import numpy as np
import xr

from gen_server import cameras
from xr_client.timeline_controls import HandState

log = logging.getLogger(__name__)

HANDS = ("left", "right")
# action name -> (xr action type, localized name)
ACTIONS = {
    "trigger": (xr.ActionType.FLOAT_INPUT, "Play (trigger)"),
    "grip": (xr.ActionType.FLOAT_INPUT, "Grab world"),
    "thumbstick": (xr.ActionType.VECTOR2F_INPUT, "Scrub"),
    "primary": (xr.ActionType.BOOLEAN_INPUT, "Pause"),
    "secondary": (xr.ActionType.BOOLEAN_INPUT, "Bookmark"),
    "menu": (xr.ActionType.BOOLEAN_INPUT, "Toggle HUD"),
    "stick_click": (xr.ActionType.BOOLEAN_INPUT, "Toggle HUD (stick)"),
    "aim": (xr.ActionType.POSE_INPUT, "Aim"),
    "haptic": (xr.ActionType.VIBRATION_OUTPUT, "Tick"),
}

_BOTH = {"trigger": "trigger/value", "grip": "squeeze/value", "thumbstick": "thumbstick",
         "stick_click": "thumbstick/click", "aim": "aim/pose", "haptic": "../../output/haptic"}
# profile -> hand -> action -> input path under /user/hand/<hand>/input/
BINDINGS: dict[str, dict[str, dict[str, str]]] = {
    "/interaction_profiles/khr/simple_controller": {
        h: {"trigger": "select/click", "menu": "menu/click", "aim": "aim/pose", "haptic": "../../output/haptic"}
        for h in HANDS},
    "/interaction_profiles/oculus/touch_controller": {
        "left": {**_BOTH, "primary": "x/click", "secondary": "y/click", "menu": "menu/click"},
        "right": {**_BOTH, "primary": "a/click", "secondary": "b/click"}},
    "/interaction_profiles/valve/index_controller": {
        h: {**_BOTH, "primary": "a/click", "secondary": "b/click"} for h in HANDS},
    "/interaction_profiles/htc/vive_controller": {
        h: {"trigger": "trigger/value", "grip": "squeeze/click", "thumbstick": "trackpad", "primary": "menu/click",
            "secondary": "trackpad/click", "aim": "aim/pose", "haptic": "../../output/haptic"} for h in HANDS},
    "/interaction_profiles/microsoft/motion_controller": {
        h: {"trigger": "trigger/value", "grip": "squeeze/click", "thumbstick": "thumbstick",
            "stick_click": "thumbstick/click", "primary": "menu/click", "secondary": "trackpad/click",
            "aim": "aim/pose", "haptic": "../../output/haptic"} for h in HANDS},
}


def binding_path(hand: str, relative: str) -> str:
    """'/user/hand/<hand>/input/<relative>'; '../../output/x' is '/user/hand/<hand>/output/x'."""
    if relative.startswith("../../"):
        return f"/user/hand/{hand}/{relative[6:]}"
    return f"/user/hand/{hand}/input/{relative}"


def pose_matrix(pose: "xr.Posef") -> np.ndarray:
    """xr.Posef -> (4, 4) parent_from_child (OpenXR axes on both sides: no conversion needed)."""
    p, q = pose.position, pose.orientation
    return cameras.pose_to_matrix([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


class InputActions:
    """Creates the action set (before the session's action sets are attached) and reads it every frame."""

    def __init__(self, instance, name: str = "timewalk"):
        self.instance = instance
        self.action_set = xr.create_action_set(instance, xr.ActionSetCreateInfo(
            action_set_name=name, localized_action_set_name="Timewalk", priority=0))
        self.hand_paths = {h: xr.string_to_path(instance, f"/user/hand/{h}") for h in HANDS}
        subpaths = list(self.hand_paths.values())
        self.actions = {
            key: xr.create_action(self.action_set, xr.ActionCreateInfo(
                action_type=kind, action_name=key, localized_action_name=label, subaction_paths=subpaths))
            for key, (kind, label) in ACTIONS.items()}
        self.profiles_bound: list[str] = []
        for profile, hands in BINDINGS.items():
            bindings = [xr.ActionSuggestedBinding(self.actions[a], xr.string_to_path(instance, binding_path(h, p)))
                        for h, table in hands.items() for a, p in table.items()]
            try:
                xr.suggest_interaction_profile_bindings(instance, xr.InteractionProfileSuggestedBinding(
                    interaction_profile=xr.string_to_path(instance, profile), suggested_bindings=bindings))
                self.profiles_bound.append(profile)
            except xr.XrException as e:  # a runtime may not know a profile: the others still work
                log.warning("suggested bindings for %s refused: %s", profile, e)
        self.aim_spaces: dict[str, object] = {}

    def attach(self, session) -> None:
        xr.attach_session_action_sets(session, xr.SessionActionSetsAttachInfo(action_sets=[self.action_set]))
        for h, path in self.hand_paths.items():
            self.aim_spaces[h] = xr.create_action_space(session, xr.ActionSpaceCreateInfo(
                action=self.actions["aim"], subaction_path=path))

    def read(self, session, base_space, display_time: int) -> dict[str, HandState]:
        """Sync and read both hands (call only while FOCUSED); aim poses located in ``base_space``."""
        try:
            xr.sync_actions(session, xr.ActionsSyncInfo(
                active_action_sets=[xr.ActiveActionSet(action_set=self.action_set, subaction_path=xr.NULL_PATH)]))
        except xr.SessionNotFocused:  # a success code: focus just moved away; no input this frame
            return {h: HandState() for h in HANDS}
        out = {}
        for h, path in self.hand_paths.items():
            def get(kind, key):
                return kind(session, xr.ActionStateGetInfo(action=self.actions[key], subaction_path=path))

            stick = get(xr.get_action_state_vector2f, "thumbstick").current_state
            aim = None
            loc = xr.locate_space(self.aim_spaces[h], base_space, display_time)
            valid = xr.SPACE_LOCATION_POSITION_VALID_BIT | xr.SPACE_LOCATION_ORIENTATION_VALID_BIT
            if (loc.location_flags & valid) == valid:
                aim = pose_matrix(loc.pose)
            out[h] = HandState(
                trigger=float(get(xr.get_action_state_float, "trigger").current_state),
                grip=float(get(xr.get_action_state_float, "grip").current_state),
                thumbstick=(float(stick.x), float(stick.y)),
                primary=bool(get(xr.get_action_state_boolean, "primary").current_state),
                secondary=bool(get(xr.get_action_state_boolean, "secondary").current_state),
                menu=bool(get(xr.get_action_state_boolean, "menu").current_state),
                stick_click=bool(get(xr.get_action_state_boolean, "stick_click").current_state),
                aim=aim,
            )
        return out

    def tick(self, session, hand: str, seconds: float = 0.02, amplitude: float = 0.6) -> None:
        """A short haptic pulse on one hand (ignored by runtimes without haptics)."""
        vib = xr.HapticVibration(duration=int(seconds * 1e9), frequency=0.0, amplitude=amplitude)
        try:
            xr.apply_haptic_feedback(session, xr.HapticActionInfo(
                action=self.actions["haptic"], subaction_path=self.hand_paths[hand]), vib)  # pyopenxr casts it
        except xr.XrException as e:
            log.debug("haptic tick failed: %s", e)

    def destroy(self) -> None:
        for space in self.aim_spaces.values():
            xr.destroy_space(space)
        xr.destroy_action_set(self.action_set)
