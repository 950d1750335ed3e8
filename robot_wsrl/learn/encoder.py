"""The image encoder of camera tasks: one small conv trunk per camera, its features beside the state.

DrQ/SERL-style: per camera, 3x3 convolutions (the first strided, each followed by ReLU), flatten, Linear ->
LayerNorm -> tanh. It reads the frames as the robot gives them (uint8 [B, H, W, C]): the cast, the /255 and
the NHWC -> NCHW transpose are inside the module, so the exported ONNX graph takes raw camera frames.

Training follows DrQ-v2: the critic loss trains the encoder (pre-training always; online only with
agent.encoder.train_online), the actor sees detached features, the TD target encodes s' with the current
encoder without gradients (no target encoder), and every encoded frame is randomly shifted (replicate-pad
`augment_pad`, random crop) first. Online with a frozen encoder the replay caches `[state, features]`
vectors, so the fused UTD round runs on them as on a state task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from robot_wsrl.core.spec import STATE, CameraSpec
from robot_wsrl.learn.config import EncoderConfig

IMAGE_PREFIX, NEXT_IMAGE_PREFIX = "image/", "next_image/"


def image_key(camera: str) -> str:
    """A batch's key for a camera's frames at s (uint8 [n, H, W, C])."""
    return IMAGE_PREFIX + camera


def next_image_key(camera: str) -> str:
    """A batch's key for a camera's frames at s'."""
    return NEXT_IMAGE_PREFIX + camera


def random_shift(frames: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's augmentation: each image shifted by up to `pad` pixels each way, edges replicated.

    frames: [B, H, W, C] (any dtype). Equal to replicate-padding by `pad` and cropping H x W at a random
    offset, done as one gather with clamped indices (no padded copy).
    """
    if pad == 0:
        return frames
    batch, height, width = frames.shape[:3]
    drawn_on = frames.device if generator is None else generator.device
    offsets = torch.randint(0, 2 * pad + 1, (2, batch, 1), generator=generator, device=drawn_on)
    offsets = offsets.to(frames.device) - pad
    rows = (torch.arange(height, device=frames.device) + offsets[0]).clamp_(0, height - 1)  # [B, H]
    cols = (torch.arange(width, device=frames.device) + offsets[1]).clamp_(0, width - 1)  # [B, W]
    index = torch.arange(batch, device=frames.device)[:, None, None]
    return frames[index, rows[:, :, None], cols[:, None, :]]


def _conv_out(side: int, strides: Sequence[int]) -> int:
    for stride in strides:
        side = (side - 3) // stride + 1
    return side


class _CameraTrunk(nn.Module):
    """One camera's uint8 NHWC frames -> tanh features [B, feature_dim]."""

    def __init__(self, camera: CameraSpec, cfg: EncoderConfig) -> None:
        super().__init__()
        h, w = _conv_out(camera.height, cfg.strides), _conv_out(camera.width, cfg.strides)
        if h < 1 or w < 1:
            raise ValueError(
                f"camera {camera.name!r} ({camera.height}x{camera.width}) is too small for the encoder's "
                f"strides {list(cfg.strides)}"
            )
        layers: list[nn.Module] = []
        in_channels = camera.channels
        for i, (out_channels, stride) in enumerate(zip(cfg.channels, cfg.strides, strict=True)):
            layers += [*([nn.ReLU()] if i else []), nn.Conv2d(in_channels, out_channels, 3, stride)]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(in_channels * h * w, cfg.feature_dim)
        self.norm = nn.LayerNorm(cfg.feature_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.tanh(self.norm(self.head(self.convs(x))))


class ImageEncoder(nn.Module):
    """Every camera's trunk; `forward` concatenates their features in the cameras' order."""

    def __init__(self, cameras: Sequence[CameraSpec], cfg: EncoderConfig) -> None:
        super().__init__()
        if not cameras:
            raise ValueError("an image encoder needs at least one camera")
        self.cameras = tuple(cameras)
        self.camera_names = tuple(c.name for c in cameras)
        self.augment_pad = cfg.augment_pad
        self.trunks = nn.ModuleDict({c.name: _CameraTrunk(c, cfg) for c in cameras})
        self.out_dim = cfg.feature_dim * len(cameras)
        init_encoder(self)

    def forward(self, *frames: torch.Tensor) -> torch.Tensor:
        """frames: one uint8 [B, H, W, C] per camera, in `camera_names` order -> float32 [B, out_dim]."""
        return torch.cat([trunk(x) for trunk, x in zip(self.trunks.values(), frames, strict=True)], dim=-1)

    def features(self, batch: Mapping[str, torch.Tensor], prefix: str, augment: bool) -> torch.Tensor:
        """Features of a batch's frames under `prefix` (image/ or next_image/), randomly shifted if asked."""
        frames = [batch[prefix + name] for name in self.camera_names]
        if augment:
            frames = [random_shift(x, self.augment_pad) for x in frames]
        return self(*frames)


@torch.no_grad()
def init_encoder(encoder: ImageEncoder) -> None:
    """Orthogonal conv and head weights (gain sqrt 2, as DrQ's weight_init), zero biases."""
    for module in encoder.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(module.weight, gain=math.sqrt(2.0))
            module.bias.zero_()


def observation_tensors(
    obs: Mapping[str, np.ndarray], cameras: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A camera observation (one, or a batch with a leading axis) as a state tensor and frame tensors."""
    state = torch.as_tensor(np.asarray(obs[STATE], dtype=np.float32), device=device)
    frames = [torch.as_tensor(np.asarray(obs[name]), device=device) for name in cameras]
    if state.dim() == 1:
        state, frames = state[None], [x[None] for x in frames]
    return state, frames
