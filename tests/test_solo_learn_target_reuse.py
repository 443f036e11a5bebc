"""``hvs.reuse_target: true`` for solo-learn's BYOL and MoCo v3 (real classes, ViT-tiny at 16 px):
the momentum outputs of the selected views come from the selection, so the training step skips its
own momentum forward on them — same loss, same gradients, same state, fewer momentum forwards —
and every setting where that would not be exact is refused with the reason and the fix.

Skipped, with the reason shown, where solo-learn is not importable.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip(
    "solo",
    reason="solo-learn is not installed (the registry has no usable build): install it from its "
    "repository, see README.md's solo-learn section",
)
from omegaconf import OmegaConf  # noqa: E402
from solo.args.pretrain import parse_cfg  # noqa: E402
from solo.methods import METHODS  # noqa: E402
from solo.utils.momentum import initialize_momentum_params  # noqa: E402

from hvs_plugins.adapters.solo_learn import hvs_parse_cfg, make_hvs_method  # noqa: E402

M, SIZE = 4, 16
KWARGS = {
    "byol": dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32),
    "mocov3": dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, temperature=0.2),
}
VIT = {"name": "vit_tiny", "kwargs": {"img_size": SIZE, "patch_size": 4}}


def _layernorm_projectors(model: nn.Module) -> None:
    """A user's BatchNorm-free variant: the projectors' BatchNorm1d → LayerNorm (per sample)."""
    for name in ("projector", "momentum_projector"):
        seq = getattr(model, name)
        for i, m in enumerate(seq):
            if isinstance(m, nn.BatchNorm1d):
                seq[i] = nn.LayerNorm(m.num_features, elementwise_affine=m.affine)
    initialize_momentum_params(model.projector, model.momentum_projector)


class LayerNormBYOL(METHODS["byol"]):
    def __init__(self, cfg):
        super().__init__(cfg)
        _layernorm_projectors(self)


class LayerNormMoCoV3(METHODS["mocov3"]):
    def __init__(self, cfg):
        super().__init__(cfg)
        _layernorm_projectors(self)


LAYERNORM = {"byol": LayerNormBYOL, "mocov3": LayerNormMoCoV3}


def _aug(n: int) -> dict:
    return {
        "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
        "grayscale": {"prob": 0.0},
        "gaussian_blur": {"prob": 0.0},
        "solarization": {"prob": 0.0},
        "equalization": {"prob": 0.0},
        "horizontal_flip": {"prob": 0.5},
        "crop_size": SIZE,
        "num_crops": n,
    }


def build(method: str, hvs: dict, cls: type | None = None, backbone: dict = VIT):
    cfg = OmegaConf.create(
        {
            "name": f"hvs-{method}",
            "method": method,
            "backbone": backbone,
            "method_kwargs": KWARGS[method],
            "momentum": {"base_tau": 0.99, "final_tau": 1.0, "classifier": True},
            "data": {"dataset": "cifar10", "train_path": "./unused", "format": "image_folder", "num_workers": 0},
            "augmentations": [_aug(1), _aug(1)],  # asymmetric, as solo-learn's BYOL / MoCo v3 scripts
            "optimizer": {"name": "sgd", "batch_size": M, "lr": 0.1, "classifier_lr": 0.1, "weight_decay": 1e-5},
            "scheduler": {"name": "none"},
            "checkpoint": {"enabled": False},
            "auto_resume": {"enabled": False},
            "max_epochs": 2,
            "devices": "1",
            "accelerator": "cpu",
            "strategy": "auto",
            "precision": 32,
            "hvs": {"n_views": 4, "log_stats": False, **hvs},
        }
    )
    OmegaConf.set_struct(cfg, False)
    cfg = hvs_parse_cfg(parse_cfg)(cfg)
    torch.manual_seed(0)
    model = make_hvs_method(cls or METHODS[method])(cfg)
    model.train()
    return model


def candidates(seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.arange(M), [torch.randn(M, 3, SIZE, SIZE, generator=g) for _ in range(4)], torch.tensor([0, 1, 2, 1])]


def _count_momentum_forwards(model) -> list[int]:
    calls = [0]
    model.momentum_backbone.register_forward_pre_hook(lambda mod, args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("method", ["byol", "mocov3"])
def test_reuse_gives_the_same_step_with_fewer_momentum_forwards(method):
    torch.set_num_threads(1)
    model = build(method, {"reuse_target": True}, LAYERNORM[method])
    twin = build(method, {"reuse_target": False}, LAYERNORM[method])
    twin.load_state_dict(model.state_dict())
    calls, twin_calls = _count_momentum_forwards(model), _count_momentum_forwards(twin)
    batch = candidates()
    loss, ref = model.training_step(batch, 0), twin.training_step(batch, 0)
    # same selection, then the training step's 2 momentum forwards skipped: 4 instead of 4 + 2
    assert torch.equal(model.hvs_last["selection"].chosen, twin.hvs_last["selection"].chosen)
    assert (calls[0], twin_calls[0]) == (4, 6)
    assert model.hvs_last["target_reused"] == 2 and "target_reused" not in twin.hvs_last
    # the loss includes the momentum classifier's loss on the reused momentum features
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-6)
    loss.backward(), ref.backward()
    grads, twin_grads = dict(model.named_parameters()), dict(twin.named_parameters())
    for name, p in grads.items():
        q = twin_grads[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6, msg=name)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.momentum_classifier.parameters())
    twin_state = twin.state_dict()
    for k, v in model.state_dict().items():  # no state the skipped forward would have written
        assert torch.equal(v, twin_state[k]), k
    # the shadowing was for that step only: momentum_forward is the method's own again
    assert "momentum_forward" not in model.__dict__ and model._hvs_target_cache is None


def test_steps_without_selection_run_the_real_momentum_forward():
    torch.set_num_threads(1)
    model = build("byol", {"reuse_target": True, "probability": 0.0}, LayerNormBYOL)
    calls = _count_momentum_forwards(model)
    model.training_step(candidates(), 0)
    assert model.hvs_last.get("skipped") and calls[0] == 2 and "target_reused" not in model.hvs_last


@pytest.mark.parametrize(
    "method, hvs, cls, backbone, match",
    [
        ("byol", {}, None, VIT, r"momentum_projector has BatchNorm1d in train mode \(momentum_projector\.1\)"),
        ("mocov3", {}, None, VIT, r"momentum_projector has BatchNorm1d in train mode \(momentum_projector\.1, "),
        ("byol", {}, None, {"name": "resnet18"}, r"momentum_backbone has BatchNorm2d in train mode \(momentum_backbone\.bn1"),
        ("byol", {"resolution_scale": 0.5}, LayerNormBYOL, VIT, r"needs selection at full resolution \(hvs\.resolution_scale: 1\.0"),
        ("mocov3", {"score_layer": "backbone.blocks.0"}, LayerNormMoCoV3, VIT, r"cannot be combined with hvs\.score_layer"),
        ("byol", {"autocast": "bfloat16"}, LayerNormBYOL, VIT, r"cannot be combined with hvs\.autocast"),
    ],
)
def test_inexact_reuse_is_refused_at_setup(method, hvs, cls, backbone, match):
    with pytest.raises(ValueError, match=match) as err:
        build(method, {"reuse_target": True, **hvs}, cls, backbone)
    assert "hvs.reuse_target: false" in str(err.value)  # the fix
    build(method, hvs, cls, backbone)  # the same settings without reuse are fine


def test_momentum_network_changed_after_setup_is_refused_at_the_selection():
    torch.set_num_threads(1)
    model = build("byol", {"reuse_target": True}, LayerNormBYOL)
    model.momentum_backbone.blocks[3].attn.attn_drop.p = 0.1  # fused attention: dropout module never called
    drop = r"momentum_backbone has Dropout in train mode \(momentum_backbone\.blocks\.3\.attn\.attn_drop\)"
    with pytest.raises(ValueError, match=drop):
        model.training_step(candidates(), 0)
    model.momentum_backbone.blocks[3].attn.attn_drop.p = 0.0
    model.momentum_projector.append(nn.BatchNorm1d(KWARGS["byol"]["proj_output_dim"]))
    with pytest.raises(ValueError, match=r"momentum_projector has BatchNorm1d in train mode \(momentum_projector\.4\)"):
        model.training_step(candidates(), 0)
    assert "momentum_forward" not in model.__dict__
