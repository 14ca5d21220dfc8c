"""Monocular depth for plain videos, through transformers' depth-estimation models (Depth Anything, DPT,
ZoeDepth, Depth Pro, GLPN ...): a local folder or a hub id (already in the local cache when offline).

Metric models predict metres and are used as they are. Relative models (e.g. Depth Anything V2 "relative")
predict an affine-invariant *disparity*; it is turned into depth as ``scale * median(disparity) / disparity``,
i.e. the median pixel is put at ``scale`` metres (so ``scale`` is the typical distance of the scene) and
pixels with (near-)zero disparity (sky) get depth 0 = unknown. That guess is only a starting point: poses and
calibration fix the real scale later.
"""

from __future__ import annotations

import numpy as np
import torch

from gen_server.errors import InputError

# Families whose outputs are metres whatever their config says.
_METRIC_MODEL_TYPES = {"zoedepth", "depth_pro", "glpn", "prompt_depth_anything"}
_MIN_RELATIVE_DISPARITY = 1e-2  # below this fraction of the median disparity: sky / unknown (depth 0)


def is_metric_model(config, name: str = "") -> bool:
    """Whether a transformers depth model predicts metres: config (depth_estimation_type "metric", a metric
    model family) or a checkpoint name saying so (e.g. "...-Metric-Indoor-...")."""
    if getattr(config, "depth_estimation_type", None) == "metric":
        return True
    if getattr(config, "model_type", "") in _METRIC_MODEL_TYPES:
        return True
    return "metric" in name.lower()


class MonocularDepth:
    """``MonocularDepth(model).predict(rgb) -> depth (H, W) float32 metres`` at the frame's own size.

    ``metric``: None = decide from the config/name (:func:`is_metric_model`); True/False to override.
    ``scale``: for relative models only, the metres the median pixel is placed at.
    ``device``: a torch device string; None = "cuda" when available, else "cpu".
    """

    def __init__(self, model: str, device: str | None = "cpu", metric: bool | None = None, scale: float = 1.0):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        if not scale > 0:
            raise InputError(f"{model}: depth scale must be positive, got {scale}")
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModelForDepthEstimation.from_pretrained(model)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{model}: cannot load a transformers depth model ({first})") from None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.name, self.device, self.scale = model, torch.device(device), float(scale)
        self.model.to(self.device).eval()
        self.metric = is_metric_model(self.model.config, model) if metric is None else bool(metric)

    def describe(self) -> dict:
        """For manifests: which model and how its output was turned into metres."""
        how = "metric (metres as predicted)" if self.metric else \
            f"relative disparity -> depth = {self.scale:g} m * median(disparity) / disparity"
        return {"model": self.name, "type": self.model.config.model_type, "output": how}

    @torch.inference_mode()
    def raw(self, rgb: np.ndarray) -> np.ndarray:
        """The model's output (H, W) float32 resized to the frame (bilinear): metres or disparity."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        inputs = self.processor(images=rgb, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        post = getattr(self.processor, "post_process_depth_estimation", None)
        if post is not None:  # model-specific un-padding / resizing where the processor knows it
            pred = post(outputs, target_sizes=[(h, w)])[0]["predicted_depth"]
        else:
            pred = torch.nn.functional.interpolate(outputs.predicted_depth[:, None], size=(h, w),
                                                   mode="bilinear", align_corners=False)[0, 0]
        return pred.float().cpu().numpy().reshape(h, w)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """z-depth (H, W) float32 metres for an RGB frame (H, W, 3) uint8; 0 where unknown."""
        out = np.nan_to_num(self.raw(rgb), nan=0.0, posinf=0.0, neginf=0.0)
        if self.metric:
            return np.maximum(out, 0.0).astype(np.float32)
        return disparity_to_depth(out, self.scale)


def disparity_to_depth(disparity: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Relative disparity (H, W) -> depth (H, W) float32: the median positive-disparity pixel at ``scale``
    metres, depth proportional to 1 / disparity; disparity below 1% of the median -> 0 (unknown)."""
    disparity = np.asarray(disparity, np.float64)
    positive = disparity[disparity > 0]
    if positive.size == 0:
        return np.zeros(disparity.shape, np.float32)
    median = float(np.median(positive))
    valid = disparity > _MIN_RELATIVE_DISPARITY * median
    depth = np.zeros(disparity.shape)
    depth[valid] = scale * median / disparity[valid]
    return depth.astype(np.float32)
