"""Hard View Selection (Ferreira, Rapant, Hutter, 2023): framework-agnostic core.

Imports torch only. Host adapters live in ``hvs_plugins.adapters``.
"""

from .crops import CandidateTransform, box_iou, install_box_recorders, pair_ious
from .contrastive import dcl_pair_losses, macl_pair_losses, tico_pair_losses
from .generator import (
    EpsSchedule,
    GeneratedCandidates,
    GeneratorStats,
    HardViewGenerator,
    ViewGenerator,
    ViewmakerNet,
    budget_perturbation,
    hardness_gap,
    reverse_gradient,
)
from .geometric import min_iou_pair_scores, select_min_iou
from .guard import preserve_state
from .ibot import ibot_combination_ce, ibot_patch_cross_entropy
from .losses import (
    dino_cross_entropy,
    dino_pair_losses,
    invariance_proxy_pair_losses,
    negative_cosine_pair_losses,
    ntxent_pair_losses,
)
from .multicrop import DEFAULT_CAP, CombinationChoice, Combinations, CombinationSpace
from .pairs import all_pairs, cross_pairs, interleaved_groups, make_pairs
from .layer_scoring import cosine_distance_pair_losses, layer_forward, select_by_layer
from .runner import HardViewSelector, resize_views
from .schedule import HVSSchedule
from .selection import (
    HVSFallbackWarning,
    Selection,
    argmax_with_fallback,
    check_candidate_views,
    gather_pair,
    gather_views,
    select_hardest,
    warn_fallbacks,
)
from .per_sample import breaks_per_sample, modules_run, per_sample_violations, ran_violations
from .stats import SelectionStats, selection_stats
from .swav import swav_codes, swav_cross_entropy, swav_pair_losses
from .unscorable import HVSUnscorableWarning, UnscorableBatches, reason_from_error, unscorable_reason

__version__ = "0.1.0"

__all__ = [
    "EpsSchedule",
    "GeneratedCandidates",
    "GeneratorStats",
    "HardViewGenerator",
    "ViewGenerator",
    "ViewmakerNet",
    "budget_perturbation",
    "hardness_gap",
    "reverse_gradient",
    "CandidateTransform",
    "box_iou",
    "min_iou_pair_scores",
    "select_min_iou",
    "install_box_recorders",
    "pair_ious",
    "preserve_state",
    "dino_cross_entropy",
    "dino_pair_losses",
    "invariance_proxy_pair_losses",
    "negative_cosine_pair_losses",
    "ntxent_pair_losses",
    "DEFAULT_CAP",
    "CombinationChoice",
    "Combinations",
    "CombinationSpace",
    "all_pairs",
    "cross_pairs",
    "interleaved_groups",
    "make_pairs",
    "HardViewSelector",
    "HVSSchedule",
    "resize_views",
    "Selection",
    "argmax_with_fallback",
    "gather_pair",
    "gather_views",
    "select_hardest",
    "SelectionStats",
    "selection_stats",
    "cosine_distance_pair_losses",
    "layer_forward",
    "select_by_layer",
    "HVSFallbackWarning",
    "warn_fallbacks",
    "check_candidate_views",
    "swav_codes",
    "swav_cross_entropy",
    "swav_pair_losses",
    "breaks_per_sample",
    "modules_run",
    "per_sample_violations",
    "ran_violations",
    "HVSUnscorableWarning",
    "UnscorableBatches",
    "reason_from_error",
    "unscorable_reason",
    "ibot_combination_ce",
    "ibot_patch_cross_entropy",
    "dcl_pair_losses",
    "macl_pair_losses",
    "tico_pair_losses",
]
