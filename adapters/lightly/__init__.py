"""Hard View Selection for lightly.

    from hvs_plugins.adapters.lightly import CandidateViews, HVSLoss

    transform = CandidateViews(SimSiamTransform(input_size=32), n_views=4)
    criterion = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    ...
    x0, x1 = criterion.select(batch[0], model)        # BYOL/MoCo: (..., model, model.forward_momentum)
    # DINO: views = criterion.select(batch[0], model, model.forward_teacher, epoch=epoch)

Supported losses: NegativeCosineSimilarity (SimSiam, BYOL), NTXentLoss (SimCLR; MoCo with a memory
bank, read only during selection), DINOLoss and SwaVLoss (multi-crop, 2 candidates per crop),
IBOTLoss (iBOT: DINOLoss + IBOTPatchLoss, one mask per global candidate), DCLLoss, DCLWLoss,
MACLLoss, TiCoLoss, DirectCLRLoss; BarlowTwinsLoss / VICRegLoss only with ``proxy=True`` (a
labelled proxy); others via :func:`register_pair_loss`. The demo: ``python -m hvs_plugins.adapters.lightly.demo``.
"""

from .ibot import IBOTLoss
from .generator import HardViewGenerator, normalize_of
from .loss import HVSLoss, PairLossSpec, register_pair_loss, supported_losses
from . import more_losses  # noqa: F401,E402  registers DCL(W), MACL, TiCo, DirectCLR; Barlow/VICReg proxy
from .static_colour import StaticColourViews
from .transforms import CandidateViews

__all__ = [
    "HardViewGenerator",
    "normalize_of",
    "HVSLoss",
    "CandidateViews",
    "IBOTLoss",
    "StaticColourViews",
    "PairLossSpec",
    "register_pair_loss",
    "supported_losses",
]
