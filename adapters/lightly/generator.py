"""Learned hard views for lightly: the core's hard-view generator, ready for a lightly training loop.

    from hvs_plugins.adapters.lightly import HardViewGenerator

    gen = HardViewGenerator(eps=0.05, transform=transform)   # 1. build (normalisation read from the transform)
    x0, x1 = gen(x0, x1)                                     # 2. in the step: views -> generated views
    loss = criterion(model(x0), model(x1))
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    gen.step(loss)                                           # 3. after the host's step: the generator's own update

Nothing of the host changes: the model, its optimiser, the loss and the transform are lightly's
own. The generator is trained adversarially through a gradient-reversal function on its output
(the encoder's gradients are those of the same views as plain tensors) and its own Adam.

In a LightningModule::

    def __init__(self):
        ...
        self.gen = HardViewGenerator(eps_start=0.02, eps_end=0.08, ramp_epochs=50)  # not a submodule
    def training_step(self, batch, batch_idx):
        x0, x1 = self.gen(batch[0])                  # batch[0]: lightly's [x0, x1]
        loss = self.criterion(self(x0), self(x1))
        self.log_dict(self.gen.stats().as_dict())
        return loss
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.gen.step(outputs["loss"])              # after Lightning's optimizer.step()
    def on_train_epoch_start(self):
        self.gen.set_epoch(self.current_epoch)
    def on_save_checkpoint(self, checkpoint):
        checkpoint["hvs_generator"] = self.gen.state_dict()
    def on_load_checkpoint(self, checkpoint):
        self.gen.load_state_dict(checkpoint["hvs_generator"])

Under DDP (Lightning's or torch's) :meth:`step` averages the generator's gradients over the ranks
with ``all_reduce``, as DDP does for the model, so the generators stay identical.

Generation then selection (both routes in one step) with :class:`HVSLoss`::

    cands = gen.candidates(views)                   # views: N candidates from CandidateViews
    x0, x1 = criterion.select(cands.scoring_views, model, train_views=cands.pair)
    loss = criterion(model(x0), model(x1))
    loss.backward(); optimizer.step(); optimizer.zero_grad(); gen.step(loss)

(``shared=False``: ``HVSLoss(..., groups="interleaved")`` keeps every pair one view of each generator.)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from hvs_plugins.generator import IMAGENET_MEAN, IMAGENET_STD
from hvs_plugins.generator import HardViewGenerator as _CoreGenerator

_LIGHTLY_DEFAULT = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}  # = lightly's IMAGENET_NORMALIZE


def normalize_of(transform: Any) -> Optional[dict]:
    """The ``{"mean", "std"}`` of the (last) ``Normalize`` inside a lightly transform (``SimCLRTransform``,
    ``MultiViewTransform``, ``CandidateViews``, a view transform, a ``Compose``), or None if it has none
    (lightly's ``normalize=None``: views in [0, 1])."""
    found: list[dict] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int = 0) -> None:
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        if type(obj).__name__ == "Normalize" and hasattr(obj, "mean") and hasattr(obj, "std"):
            found.append({"mean": [float(v) for v in obj.mean], "std": [float(v) for v in obj.std]})
            return
        if isinstance(obj, (list, tuple)):
            children = list(obj)
        elif isinstance(obj, dict):
            children = list(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.Tensor)):
            children = list(vars(obj).values())  # wrapped transforms, Compose lists, ...
        else:
            return
        for child in children:
            if not isinstance(child, (str, bytes, int, float, bool, type(None), torch.Tensor)):
                walk(child, depth + 1)

    walk(transform)
    if len({(tuple(f["mean"]), tuple(f["std"])) for f in found}) > 1:
        raise ValueError(f"the transform normalises its views differently ({found}): pass normalize= explicitly")
    return found[-1] if found else None


class HardViewGenerator(_CoreGenerator):
    """The core :class:`hvs_plugins.HardViewGenerator` with lightly's conventions.

    ``normalize``: lightly's normalisation dict ``{"mean": [...], "std": [...]}`` (default
    ``IMAGENET_NORMALIZE``, what lightly's transforms use; ``None``: views in [0, 1], as with lightly's
    ``normalize=None``). ``transform``: read the normalisation from the lightly transform instead.
    ``gen(batch[0])`` accepts lightly's view list ``[x0, x1]``. Other options: as the core (``eps`` or
    ``eps_start``/``eps_end``/``ramp_epochs``, ``shared``, ``width``, ``n_blocks``, ``stem_kernel``,
    ``lr``, ``betas``, ``weight_decay``, ``reverse_scale``, ``seed``, ``sync_grads``, ``enabled``).
    ``state_dict()``: weights, noise-stream positions, Adam state, schedule position, step count.
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        normalize: Optional[Mapping[str, Sequence[float]]] = _LIGHTLY_DEFAULT,
        transform: Any = None,
        **kwargs: Any,
    ) -> None:
        if "mean" in kwargs or "std" in kwargs:
            raise ValueError("the lightly generator takes lightly's normalize={'mean': ..., 'std': ...} (or transform=), not mean=/std=")
        if transform is not None:
            normalize = normalize_of(transform)
        if normalize is None:
            mean, std = (0.0,) * channels, (1.0,) * channels
        else:
            if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
                raise ValueError(
                    f"normalize must be a dict with keys 'mean' and 'std' (lightly's IMAGENET_NORMALIZE), "
                    f"or None for views in [0, 1]; got {normalize!r}"
                )
            mean, std = tuple(normalize["mean"]), tuple(normalize["std"])
        type(self).check_keys(kwargs)  # unknown options: an error listing the valid keys
        super().__init__(channels, mean=mean, std=std, **kwargs)
        self.config["normalize"] = None if normalize is None else {"mean": list(mean), "std": list(std)}

    @classmethod
    def valid_keys(cls) -> list[str]:
        return [k for k in _CoreGenerator.valid_keys() if k not in ("mean", "std")] + ["normalize", "transform"]
