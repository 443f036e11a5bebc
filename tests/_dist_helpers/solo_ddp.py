"""2-process CPU DDP (gloo) run of a solo-learn method with HVS through Lightning's DDP strategy.

Usage: python solo_ddp.py OUT_DIR METHOD [STEPS]    (solo-learn 1.0.6 / lightning 2.1.2)

Lightning re-launches this script for rank 1. Every rank writes OUT_DIR/rank{r}.pt: per step the
candidate crops and indexes it received, the state before the step, the wrapper's selection, and
the final state.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf
from solo.args.pretrain import parse_cfg
from solo.methods import METHODS

from hvs_plugins.adapters.solo_learn import hvs_parse_cfg, make_hvs_method

torch.set_num_threads(1)
N_VIEWS, SIZE, N_SAMPLES, BATCH = 4, 16, 16, 4
KWARGS = {
    "simclr": dict(proj_hidden_dim=32, proj_output_dim=16, temperature=0.2),
    "mocov3": dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, temperature=0.2),
}


def _aug(num_crops: int) -> dict:
    return {
        "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
        "grayscale": {"prob": 0.2},
        "gaussian_blur": {"prob": 0.0},
        "solarization": {"prob": 0.0},
        "equalization": {"prob": 0.0},
        "horizontal_flip": {"prob": 0.5},
        "crop_size": SIZE,
        "num_crops": num_crops,
    }


def build_cfg(method: str, devices: str = "2"):
    cfg = OmegaConf.create(
        {
            "name": f"hvs-ddp-{method}",
            "method": method,
            "backbone": {"name": "resnet18"},
            "method_kwargs": dict(KWARGS[method]),
            "momentum": {"base_tau": 0.99, "final_tau": 1.0},
            "data": {"dataset": "cifar10", "train_path": "./unused", "format": "image_folder", "num_workers": 0},
            "augmentations": [_aug(2)],
            "optimizer": {"name": "sgd", "batch_size": BATCH, "lr": 0.1, "classifier_lr": 0.1, "weight_decay": 1e-5},
            "scheduler": {"name": "none"},
            "checkpoint": {"enabled": False},
            "auto_resume": {"enabled": False},
            "max_epochs": 2,
            "devices": devices,
            "accelerator": "cpu",
            "strategy": "ddp",
            "precision": 32,
            "hvs": {"n_views": N_VIEWS, "log_stats": False},
        }
    )
    OmegaConf.set_struct(cfg, False)
    return hvs_parse_cfg(parse_cfg)(cfg)


def build_model(method: str, devices: str = "2"):
    seed_everything(0)
    return make_hvs_method(METHODS[method])(build_cfg(method, devices))


class Candidates(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(1000 + i)
        return i, [torch.randn(3, SIZE, SIZE, generator=g) for _ in range(N_VIEWS)], i % 10


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Recorder(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.records: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        idx, views, _ = batch
        self.records.append(
            {"step": trainer.global_step, "idx": idx.clone(), "views": [v.clone() for v in views], "pre": _state(pl_module)}
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sel = pl_module.hvs_last["selection"]
        self.records[-1].update(index=sel.index.clone(), pair_losses=sel.pair_losses.clone())

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "records": self.records,
                "final": _state(pl_module),
                "rank": trainer.global_rank,
                "world": trainer.world_size,
                "selector": pl_module.hvs_selector.state_dict(),
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


def main() -> None:
    out_dir, method = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    model = build_model(method)
    loader = torch.utils.data.DataLoader(Candidates(), batch_size=BATCH, shuffle=True, num_workers=0)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120), find_unused_parameters=False),
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Recorder(out_dir)],
    )
    trainer.fit(model, loader)


if __name__ == "__main__":
    main()
