"""The generator network of learned hard views: a Viewmaker-style image-to-image net and the
per-image budget (``generator.py`` trains it against the host). Torch only.

:class:`ViewGenerator` maps normalised views ``[B, C, H, W]`` to views of the same shape: input +
a perturbation whose mean absolute value per image is exactly ε in [0, 1] pixel units (before
the clamp to [0, 1]), with fresh noise from its own ``torch.Generator`` on every call.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 8  # two stride-2 stages must leave more than one spatial element for instance norm

_MIX_SEED, _MIX_RANK = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9  # odd 64-bit constants (seed mixing)


# ----------------------------------------------------------------------------- budget
def budget_perturbation(raw: torch.Tensor, eps: float) -> torch.Tensor:
    """``raw [B, ...]`` -> ``δ [B, ...]`` with ``mean |δ| = eps`` per sample (exact up to float
    rounding): ``δ = eps · tanh(raw) / mean|tanh(raw)|``."""
    t = torch.tanh(raw)
    mag = t.abs().flatten(1).mean(1).clamp_min(1e-30)  # [B]
    return t * (eps / mag).view(-1, *([1] * (t.dim() - 1)))


def mean_abs_per_sample(x: torch.Tensor) -> torch.Tensor:
    """``x [B, ...]`` -> ``[B]``: mean absolute value per sample."""
    return x.abs().flatten(1).mean(1)


# ----------------------------------------------------------------------------- the network
def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class _ConvIN(nn.Sequential):
    """conv -> instance norm (affine) -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__(_conv(cin, cout, k, stride), nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))) at constant width."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_ConvIN(ch, ch, 3), _conv(ch, ch, 3), nn.InstanceNorm2d(ch, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ViewmakerNet(nn.Module):
    """Image-to-image network in the style of the Viewmaker (fast style transfer):
    stem conv (``stem_kernel``, input channels + 1 noise channel) -> 2 stride-2 convs ->
    ``n_blocks`` residual blocks, each given one more noise channel -> 2 upsampling stages
    (interpolation to the exact sizes of the way down, then conv) -> final conv back to
    ``channels``, initialised near zero (1% of PyTorch's default scale, zero bias).
    Instance norm + ReLU throughout. ``forward(x [B, C, H, W], rng) -> raw [B, C, H, W]``."""

    def __init__(self, channels: int = 3, width: int = 32, n_blocks: int = 3, stem_kernel: int = 9) -> None:
        super().__init__()
        w, deep = width, 4 * width
        self.channels, self.n_blocks = channels, n_blocks
        self.stem = _ConvIN(channels + 1, w, stem_kernel)
        self.down1 = _ConvIN(w, 2 * w, 3, stride=2)
        self.down2 = _ConvIN(2 * w, deep, 3, stride=2)
        self.blocks = nn.ModuleList(_Residual(deep + i + 1) for i in range(n_blocks))  # +1 noise channel each
        self.up1 = _ConvIN(deep + n_blocks, 2 * w, 3)
        self.up2 = _ConvIN(2 * w, w, 3)
        self.out = _conv(w, channels, stem_kernel)
        with torch.no_grad():  # near zero: the budget rescaling fixes the magnitude, the net the direction
            self.out.weight.mul_(0.01)
            if self.out.bias is not None:
                self.out.bias.zero_()

    def forward(self, x: torch.Tensor, rng: Optional[torch.Generator] = None) -> torch.Tensor:
        def noise(like: torch.Tensor) -> torch.Tensor:  # one uniform channel [B, 1, h, w]
            b, _, h, w = like.shape
            return torch.rand(b, 1, h, w, generator=rng, device=like.device, dtype=like.dtype)

        h0 = self.stem(torch.cat([x, noise(x)], 1))
        h1 = self.down1(h0)
        h = self.down2(h1)
        for block in self.blocks:
            h = block(torch.cat([h, noise(h)], 1))
        h = self.up1(F.interpolate(h, size=h1.shape[-2:], mode="nearest"))
        h = self.up2(F.interpolate(h, size=x.shape[-2:], mode="nearest"))
        return self.out(h)


def _check_views(x: Any, channels: int, what: str = "view") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the generator takes image tensors [B, {channels}, H, W], got {type(x).__name__} as {what}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"the generator takes a batch of images [B, {channels}, H, W], got {list(x.shape)} as {what}: "
            + (
                "add the batch dimension (x.unsqueeze(0))"
                if x.dim() == 3
                else f"build it with channels={x.shape[1]} (and mean/std of that length)"
                if x.dim() == 4
                else "pass the image batch, not features"
            )
        )
    if min(x.shape[-2:]) < MIN_SIDE:
        raise ValueError(
            f"the generator needs images of at least {MIN_SIDE}x{MIN_SIDE} px (two stride-2 stages), "
            f"got {list(x.shape[-2:])} as {what}: generate before downscaling"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"the generator takes float (normalised) views, got {x.dtype} as {what}: convert with the host's ToTensor/Normalize first"
        )


class ViewGenerator(nn.Module):
    """One generator: normalised view -> generated normalised view with ``mean|δ| = eps`` per image.

    ``forward(x [B, C, H, W] normalised with mean/std, eps) -> [B, C, H, W]`` (same normalisation):
    denormalise -> ``clamp(x01 + δ, 0, 1)`` -> renormalise. ``mean``/``std``: per channel (ImageNet by
    default; ``(0,)*C`` / ``(1,)*C`` for views in [0, 1]). ``seed``: the initial weights (built inside
    a forked RNG: the global RNG is untouched) and the noise stream. After each call
    ``last_delta`` / ``last_realised`` hold the per-image ``mean|δ|`` before / after the clamp ``[B]``.
    """

    mean: torch.Tensor  # [1, C, 1, 1] buffers (registered in __init__)
    std: torch.Tensor
    last_delta: Optional[torch.Tensor]
    last_realised: Optional[torch.Tensor]

    def __init__(
        self,
        channels: int = 3,
        *,
        width: int = 32,
        n_blocks: int = 3,
        stem_kernel: int = 9,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        super().__init__()
        mean_t, std_t = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != (channels,) or std_t.shape != (channels,):
            raise ValueError(
                f"mean and std need one value per channel ({channels}), got {list(mean_t.shape)} / "
                f"{list(std_t.shape)}: pass the host's Normalize(mean, std)"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive per channel, got {std_t.tolist()}")
        with torch.random.fork_rng(devices=[]):  # reproducible weights; the global RNG is left alone
            torch.manual_seed(seed)
            self.net = ViewmakerNet(channels, width, n_blocks, stem_kernel)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.channels, self.seed, self.calls = channels, int(seed), 0
        self._rngs: dict[str, torch.Generator] = {}
        self.last_delta: Optional[torch.Tensor] = None
        self.last_realised: Optional[torch.Tensor] = None

    # -- noise RNG: own generator per device, reseeded per call from (seed, rank, calls)
    def _rng(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._rngs:
            self._rngs[key] = torch.Generator(device=device)
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        s = (self.seed * _MIX_SEED + rank * _MIX_RANK + self.calls) % (2**63)
        self.calls += 1
        return self._rngs[key].manual_seed(s)

    def get_extra_state(self) -> dict:
        """Noise-stream position (in ``state_dict()``): resuming continues the same noise draws."""
        return {"seed": self.seed, "calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.calls = int(state["seed"]), int(state["calls"])

    def forward(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        _check_views(x, self.channels)
        _check_eps(eps, "eps")
        x01 = x.float() * self.std + self.mean  # the budget in float32, also under autocast
        delta = budget_perturbation(self.net(x, self._rng(x.device)).float(), eps)  # the net sees the normalised view
        out01 = (x01 + delta).clamp(0.0, 1.0)
        self.last_delta = mean_abs_per_sample(delta.detach())
        self.last_realised = mean_abs_per_sample(out01.detach() - x01)
        return ((out01 - self.mean) / self.std).to(x.dtype)


def _check_eps(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(
            f"{name} must be in (0, 1] (mean |δ| per image in [0, 1] pixel units; the Viewmaker uses 0.05), got {value!r}: "
            f"set {name} to e.g. 0.05"
        )
