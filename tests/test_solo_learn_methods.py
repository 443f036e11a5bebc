"""solo-learn methods added for issue 13 (NNBYOL, ReSSL, SupCon, DeepClusterV2, SwAV exact; VIbCReg,
W-MSE proxy; All4One, MAE refused) against the real solo-learn classes (built through
``parse_cfg`` / ``METHODS``). Per method:

- exactness: the mean of the per-sample pair (or combination) losses equals the method's own loss
  function on that pair, fed with every sample on that pair (SwAV: the Sinkhorn codes couple the
  samples, so that is exactly where equality holds; SupCon's negatives likewise);
- selection leaves every parameter, buffer (BN statistics, queues, prototypes), the k-means
  assignments and the global RNG bitwise unchanged;
- the wrapper's training_step equals the method's own training_step on the selected crops.

Skipped, with the reason shown, where solo-learn is not importable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip(
    "solo",
    reason="solo-learn is not installed (the registry has no usable build): install it from its "
    "repository, see README.md's solo-learn section",
)
from omegaconf import OmegaConf  # noqa: E402
from solo.args.pretrain import parse_cfg  # noqa: E402
from solo.losses.byol import byol_loss_func  # noqa: E402
from solo.losses.deepclusterv2 import deepclusterv2_loss_func  # noqa: E402
from solo.losses.ressl import ressl_loss_func  # noqa: E402
from solo.losses.simclr import simclr_loss_func  # noqa: E402
from solo.losses.swav import swav_loss_func  # noqa: E402
from solo.losses.vicreg import invariance_loss  # noqa: E402
from solo.methods import METHODS  # noqa: E402
from solo.utils.sinkhorn_knopp import SinkhornKnopp  # noqa: E402

from hvs_plugins import preserve_state  # noqa: E402
from hvs_plugins.adapters.solo_learn import check_method, hvs_parse_cfg, make_hvs_method, parse_hvs_config  # noqa: E402

M, SIZE = 8, 16
KWARGS = {
    "nnbyol": dict(proj_hidden_dim=64, proj_output_dim=32, pred_hidden_dim=64, queue_size=64),
    "ressl": dict(proj_hidden_dim=64, proj_output_dim=32, temperature_q=0.1, temperature_k=0.04, queue_size=64),
    "supcon": dict(proj_hidden_dim=64, proj_output_dim=32, temperature=0.2),
    "deepclusterv2": dict(proj_hidden_dim=64, proj_output_dim=32, num_prototypes=[20, 20], temperature=0.1),
    "swav": dict(proj_hidden_dim=64, proj_output_dim=32, num_prototypes=40, temperature=0.1, queue_size=16, epoch_queue_starts=0),
    "vibcreg": dict(proj_hidden_dim=64, proj_output_dim=32, iternorm=True),
    "wmse": dict(proj_hidden_dim=64, proj_output_dim=4, whitening_size=8),
}
ASYMMETRIC = {"nnbyol", "ressl"}  # as in solo-learn's cifar scripts (two pipelines)


def _aug(size: int, n: int) -> dict:
    return {
        "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
        "grayscale": {"prob": 0.0},
        "gaussian_blur": {"prob": 0.0},
        "solarization": {"prob": 0.0},
        "equalization": {"prob": 0.0},
        "horizontal_flip": {"prob": 0.5},
        "crop_size": size,
        "num_crops": n,
    }


def build(method: str, hvs: dict | None = None, small: int = 0, asymmetric: bool | None = None, plain=False, **method_kwargs):
    asymmetric = method in ASYMMETRIC if asymmetric is None else asymmetric
    augs = [_aug(SIZE, 1), _aug(SIZE, 1)] if asymmetric else [_aug(SIZE, 2)]
    if small:
        augs.append(_aug(SIZE // 2, small))
    cfg = {
        "name": f"hvs-{method}",
        "method": method,
        "backbone": {"name": "resnet18"},
        "method_kwargs": {**KWARGS[method], **method_kwargs},
        "momentum": {"base_tau": 0.99, "final_tau": 1.0},
        "data": {"dataset": "cifar10", "train_path": "./unused", "format": "image_folder", "num_workers": 0},
        "augmentations": augs,
        "optimizer": {"name": "sgd", "batch_size": M, "lr": 0.1, "classifier_lr": 0.1, "weight_decay": 1e-5},
        "scheduler": {"name": "none"},
        "checkpoint": {"enabled": False},
        "auto_resume": {"enabled": False},
        "max_epochs": 2,
        "devices": "1",
        "accelerator": "cpu",
        "strategy": "auto",
        "precision": 32,
    }
    if not plain:
        cfg["hvs"] = {"n_views": 4, "log_stats": False, **(hvs or {})}
    cfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg = hvs_parse_cfg(parse_cfg)(cfg)
    torch.manual_seed(0)
    model = (METHODS[method] if plain else make_hvs_method(METHODS[method]))(cfg)
    model.train()
    _host_train_start(model)
    return model


def _host_train_start(model) -> None:
    """What the methods' on_train_start / on_train_epoch_start set up inside a Trainer (they read
    self.trainer): SwAV's Sinkhorn and queue, DeepClusterV2's k-means assignments (random here, as
    after its first epoch), and a filled queue for the nearest-neighbour / ReSSL methods."""
    g = torch.Generator().manual_seed(3)
    if type(model).__name__.endswith("SwAV"):
        model.sk = SinkhornKnopp(model.sk_iters, model.sk_epsilon, 1)
        queue = F.normalize(torch.randn(2, model.queue_size, model.proj_output_dim, generator=g), dim=-1)
        model.register_buffer("queue", queue)
    if type(model).__name__.endswith("DeepClusterV2"):
        model.assignments = torch.stack([torch.randint(0, k, (64,), generator=g) for k in model.num_prototypes])
        model.register_buffer("local_memory_index", torch.zeros(64, dtype=torch.long))
        model.register_buffer("local_memory_embeddings", F.normalize(torch.randn(2, 64, model.proj_output_dim, generator=g), dim=-1))
    if hasattr(model, "queue") and model.queue.dim() == 2:
        model.queue.copy_(F.normalize(torch.randn(model.queue.shape, generator=g), dim=-1))


def candidates(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lay = model.hvs_layout
    large = [torch.randn(M, 3, SIZE, SIZE, generator=g) for _ in range(lay.n_views)]
    small = [torch.randn(M, 3, SIZE // 2, SIZE // 2, generator=g) for _ in range(lay.n_small_candidates)]
    return [torch.arange(M) * 3 % 64, large + small, torch.tensor([0, 1, 2, 0, 1, 0, 3, 3])]


def reference_loss(model, method: str, crops: list, batch) -> float:
    """The method's own loss function on crops (crop 1, crop 2, small crops...), every sample on them."""
    idx, _, targets = batch
    with preserve_state([model]), torch.no_grad():
        xa, xb = crops[:2]
        oa, ob = model(xa), model(xb)
        if method == "nnbyol":
            _, nn_a = model.find_nn(model.momentum_forward(xa)["z"])
            _, nn_b = model.find_nn(model.momentum_forward(xb)["z"])
            loss = byol_loss_func(oa["p"], nn_b) + byol_loss_func(ob["p"], nn_a)
        elif method == "ressl":
            k = model.momentum_forward(xb)["z"]
            loss = ressl_loss_func(oa["z"], k, model.queue.clone(), model.temperature_q, model.temperature_k)
        elif method == "supcon":
            loss = simclr_loss_func(torch.cat([oa["z"], ob["z"]]), indexes=targets.repeat(2), temperature=model.temperature)
        elif method == "deepclusterv2":
            preds = torch.stack([oa["p"].unsqueeze(1), ob["p"].unsqueeze(1)], dim=1)
            loss = deepclusterv2_loss_func(preds, model.assignments[:, idx], model.temperature)
        elif method == "swav":
            preds = [oa["p"], ob["p"]] + [model.multicrop_forward(x)["p"] for x in crops[2:]]
            loss = swav_loss_func(preds, model.get_assignments(preds[:2]), model.temperature)
        elif method in ("vibcreg", "wmse"):  # the proxy equals the invariance term (MSE of the projections)
            loss = invariance_loss(oa["z"], ob["z"])
        else:
            raise AssertionError(method)
    return float(loss)


TWO_VIEW = ["nnbyol", "ressl", "supcon", "deepclusterv2", "swav"]


@pytest.mark.parametrize("method", TWO_VIEW + ["vibcreg", "wmse"])
def test_pair_losses_equal_the_methods_own_loss(method):
    torch.set_num_threads(1)
    model = build(method, {"proxy": True} if method in ("vibcreg", "wmse") else None)
    batch = candidates(model)
    large = batch[1][:4]
    model.hvs_select(batch[1], indexes=batch[0], targets=batch[2])
    sel = model.hvs_last["selection"]
    expected_p = {"nnbyol": 4, "ressl": 4, "swav": 12}.get(method, 6)  # swav: ordered (2 queue halves)
    assert sel.pairs.shape[0] == expected_p and sel.pair_losses.shape == (expected_p, M)
    for p, (a, b) in enumerate(sel.pairs.tolist()):
        ref = reference_loss(model, method, [large[a], large[b]], batch)
        assert float(sel.pair_losses[p].mean()) == pytest.approx(ref, rel=1e-5, abs=1e-6), (method, a, b)
    assert torch.equal(sel.index, sel.pair_losses.argmax(0))


def test_swav_without_queue_scores_unordered_pairs():
    model = build("swav", queue_size=0)
    batch = candidates(model)
    model.hvs_select(batch[1])
    sel = model.hvs_last["selection"]
    assert sel.pairs.shape[0] == 6
    for p, (a, b) in enumerate(sel.pairs.tolist()):
        ref = reference_loss(model, "swav", [batch[1][a], batch[1][b]], batch)
        assert float(sel.pair_losses[p].mean()) == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("queue_size", [16, 0])
def test_swav_multicrop_combination_equals_swav_loss(queue_size):
    """SwAV 2 large + 3 small crops, candidates 4 large + 6 small: a combination's per-sample mean
    equals solo-learn's swav_loss_func (codes from the method's get_assignments) with every sample
    on that combination; the exact search is at least as hard as the capped one."""
    torch.set_num_threads(1)
    model = build("swav", {"cap": 16}, small=3, queue_size=queue_size)
    space = model.hvs_space
    assert space is not None and space.global_pairing == ("cross" if queue_size else "any")
    batch = candidates(model)
    large, small = batch[1][:4], batch[1][4:]
    crops = model.hvs_select(batch[1])
    assert len(crops) == 5 and crops[2].shape[-1] == SIZE // 2
    ce = model.hvs_last["ce"]
    for flat in (0, 29, space.size - 1):
        combo = space.unrank(torch.tensor([flat]))
        ga, gb = combo.globals_[0].tolist()  # one pipeline: candidates in batch order
        ref = reference_loss(model, "swav", [large[ga], large[gb]] + [small[i] for i in combo.locals_[0].tolist()], batch)
        assert float(space.evaluate(ce, combo)[0].mean()) == pytest.approx(ref, rel=1e-5, abs=1e-6), flat
    exact = build("swav", {"exact": True}, small=3, queue_size=queue_size)
    exact.load_state_dict(model.state_dict())
    exact.hvs_select(batch[1])
    assert bool((exact.hvs_last["choice"].losses >= model.hvs_last["choice"].losses - 1e-6).all())


def test_swav_any_pairing_with_a_queue_is_refused():
    with pytest.raises(ValueError, match="'any' cannot be scored exactly for SwAV with a queue"):
        build("swav", {"global_pairing": "any"}, small=2)


@pytest.mark.parametrize("method,small", [(m, 0) for m in TWO_VIEW] + [("swav", 2)])
def test_selection_leaves_state_and_rng_unchanged(method, small):
    torch.set_num_threads(1)
    model = build(method, small=small)
    batch = candidates(model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assignments = getattr(model, "assignments", torch.zeros(0)).clone()
    rng = torch.get_rng_state()
    model.hvs_select(batch[1], indexes=batch[0], targets=batch[2])
    after = model.state_dict()
    assert set(before) == set(after)
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{method}: {k} changed during selection"
    assert torch.equal(assignments, getattr(model, "assignments", torch.zeros(0)))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method,small", [(m, 0) for m in TWO_VIEW + ["vibcreg", "wmse"]] + [("swav", 2)])
def test_training_step_is_the_methods_own_on_the_selected_crops(method, small):
    torch.set_num_threads(1)
    hvs = {"proxy": True} if method in ("vibcreg", "wmse") else None
    model = build(method, hvs, small=small)
    twin = build(method, hvs, small=small)  # not deepcopy: SwAV's weight-normed prototypes refuse it
    twin.load_state_dict(model.state_dict())
    batch = candidates(model)
    rng = torch.get_rng_state()  # W-MSE's step draws its whitening permutation from the global RNG
    loss = model.training_step(batch, 0)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    last = model.hvs_last
    if "selection" in last:
        crops = list(last["selection"].gather(batch[1][:4]))
    else:
        from hvs_plugins import gather_views

        crops = gather_views(batch[1][:4], last["globals"]) + gather_views(batch[1][4:], last["locals"])
    base = next(c for c in type(model).__mro__ if c.__module__.startswith("solo."))  # the solo-learn class
    assert base is METHODS[method]
    torch.set_rng_state(rng)
    ref = base.training_step(twin, [batch[0], crops, batch[2]], 0)
    ref = ref["loss"] if isinstance(ref, dict) else ref
    assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    for k, v in twin.state_dict().items():  # the step's own updates (queues) happened as without HVS
        assert torch.equal(v, model.state_dict()[k]), k


def test_deepclusterv2_first_epoch_trains_on_a_plain_pair():
    model = build("deepclusterv2")
    model.assignments = -torch.ones_like(model.assignments)  # solo-learn's state before the first k-means
    batch = candidates(model)
    crops = model.hvs_select(batch[1], indexes=batch[0])
    assert model.hvs_last["skipped"] and "k-means" in model.hvs_last["reason"]
    assert crops[0] is batch[1][0] and crops[1] is batch[1][1]


def test_decisions_for_every_solo_learn_method():
    """Every method in solo-learn's METHODS is exact, proxy (with the flag) or refused with a reason."""
    default, proxy = parse_hvs_config({}), parse_hvs_config({"proxy": True})
    decided = {}
    for name in sorted(set(METHODS) - {"base", "linear"}):
        try:
            decided[name] = check_method(name, default)
        except ValueError as err:
            if "hvs.proxy: true" in str(err):
                assert check_method(name, proxy) == "proxy"
                decided[name] = "proxy"
            else:
                assert "Remove the hvs block" in str(err) and ": " in str(err)
                decided[name] = "refused"
    assert decided == {
        "all4one": "refused",
        "barlow_twins": "proxy",
        "byol": "exact",
        "deepclusterv2": "exact",
        "dino": "exact",
        "mae": "refused",
        "mocov2plus": "exact",
        "mocov3": "exact",
        "nnbyol": "exact",
        "nnclr": "exact",
        "nnsiam": "exact",
        "ressl": "exact",
        "simclr": "exact",
        "simsiam": "exact",
        "supcon": "exact",
        "swav": "exact",
        "vibcreg": "proxy",
        "vicreg": "proxy",
        "wmse": "proxy",
    }
    with pytest.raises(ValueError, match=r"'all4one': its loss adds a feature-decorrelation term"):
        check_method("all4one", default)
