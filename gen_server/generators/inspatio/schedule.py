"""Shift-5 flow-matching schedule with the published 4-step list (t = 1000, 937.5, 833.33, 625).

Convention: sigma in [0, 1], x_t = (1 - sigma) x0 + sigma * noise, t = 1000 * sigma; the model predicts
flow = noise - x0, so x0 = x_t - sigma * flow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def shift_sigma(sigma: float, shift: float) -> float:
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


@dataclass(frozen=True)
class FlowMatchSchedule:
    shift: float = 5.0
    train_steps: int = 1000
    #: The distilled model's steps on the *unshifted* grid (warped through the shift): 1000, 750, 500, 250.
    base_steps: tuple[int, ...] = (1000, 750, 500, 250)

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(shift_sigma(s / self.train_steps, self.shift) for s in self.base_steps)

    @property
    def timesteps(self) -> tuple[float, ...]:
        return tuple(self.train_steps * s for s in self.sigmas)

    @staticmethod
    def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
        return x_t.float() - sigma * flow.float()

    @staticmethod
    def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return (1.0 - sigma) * x0 + sigma * noise.float()
