"""2-process CPU run of MMSelfSup + HardViewSelectionHook through mmengine's pytorch launcher.

Usage: python -m torch.distributed.run --nproc_per_node 2 mmselfsup_dist.py OUT_DIR ALGO

Every rank writes OUT_DIR/rank{r}.pt: per iteration the raw candidate views, the model state
before the iteration, the hook's selection, and the final state.
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
import zlib

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

import hvs_plugins.adapters.mmselfsup  # noqa: F401  (registers the hook, fixes registries)
from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook
from mmcv.transforms import BaseTransform
from mmselfsup.registry import DATASETS, HOOKS, TRANSFORMS

SIZE, BATCH, N_IMAGES, N_VIEWS = 16, 4, 24, 4  # 24 images / (2 ranks x 4) = 3 iterations
_RUN_IDS = itertools.count()


@DATASETS.register_module(force=True)
class HVSDistTinyImages(BaseDataset):
    def __init__(self, n: int = N_IMAGES, seed: int = 0, **kwargs):
        self._n, self._seed = n, seed
        super().__init__(serialize_data=False, **kwargs)

    def load_data_list(self):
        rng = np.random.RandomState(self._seed)
        return [dict(img=rng.randint(0, 256, (24, 24, 3), dtype=np.uint8), img_path=f"{i}.png") for i in range(self._n)]


@TRANSFORMS.register_module(force=True)
class HVSFixedCrop(BaseTransform):
    """A crop that is a function of (image, view number): the k-th view of an image is the same in
    every epoch and after resuming (no global RNG), so interrupted and uninterrupted runs see the
    same candidates. MultiView calls the same pipeline object for each view, in order."""

    def __init__(self, size: int = SIZE, period: int = N_VIEWS):
        self.size, self.period, self.count = size, period, {}

    def transform(self, results: dict) -> dict:
        key = results["img_path"]
        k = self.count.get(key, 0)
        self.count[key] = k + 1
        rng = np.random.RandomState(zlib.crc32(f"{key}/{k % self.period}".encode()))
        img = results["img"]
        top = rng.randint(0, img.shape[0] - self.size + 1)
        left = rng.randint(0, img.shape[1] - self.size + 1)
        results["img"] = np.ascontiguousarray(img[top : top + self.size, left : left + self.size])
        results["img_shape"] = results["img"].shape[:2]
        return results


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@HOOKS.register_module(force=True)
class HVSDistRecorder(Hook):
    priority = "HIGH"  # before HardViewSelectionHook (NORMAL) replaces the views

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.records: list[dict] = []
        self.cur: dict = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.cur = {"iter": runner.iter, "inputs": [x.clone() for x in data_batch["inputs"]], "pre": _state(_unwrap(runner.model))}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        hvs = next((h for h in runner.hooks if isinstance(h, HardViewSelectionHook)), None)
        sel = hvs.last_selection if hvs is not None else None
        if sel is not None:
            self.cur.update(index=sel.index.clone(), pair_losses=sel.pair_losses.clone(), fallback=sel.fallback.clone())
        self.cur.update(
            trained=[x.clone() for x in data_batch["inputs"]],
            loss=float(torch.as_tensor(outputs["loss"]).detach()) if outputs and "loss" in outputs else None,
        )
        self.records.append(self.cur)

    def after_train(self, runner):
        torch.save(
            {
                "records": self.records,
                "final": _state(_unwrap(runner.model)),
                "rank": get_rank(),
                "world": get_world_size(),
                "selector": hvs_state(runner),
            },
            os.path.join(self.out_dir, f"rank{get_rank()}.pt"),
        )


def hvs_state(runner):
    hvs = next((h for h in runner.hooks if isinstance(h, HardViewSelectionHook)), None)
    return hvs.selector.state_dict() if hvs is not None and hvs.selector is not None else None


BACKBONE = dict(type="ResNet", depth=18, base_channels=8, in_channels=3, out_indices=[4], norm_cfg=dict(type="BN"))
FEAT = 64
# BN, not SyncBN (the necks' default): SyncBatchNorm needs GPUs; each rank normalises its shard
MODELS = {
    "SimCLR": dict(
        type="SimCLR",
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=16,
            num_layers=2,
            with_avg_pool=True,
            norm_cfg=dict(type="BN1d"),
        ),
        head=dict(type="ContrastiveHead", loss=dict(type="mmcls.CrossEntropyLoss"), temperature=0.1),
    ),
    "MoCoV3": dict(
        type="MoCoV3",
        base_momentum=0.9,
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=16,
            num_layers=2,
            with_bias=False,
            with_last_bn=True,
            with_last_bn_affine=False,
            with_last_bias=False,
            with_avg_pool=True,
            norm_cfg=dict(type="BN1d"),
        ),
        head=dict(
            type="MoCoV3Head",
            temperature=0.2,
            loss=dict(type="mmcls.CrossEntropyLoss", loss_weight=2 * 0.2),
            predictor=dict(
                type="NonLinearNeck",
                in_channels=16,
                hid_channels=16,
                out_channels=16,
                num_layers=2,
                with_bias=True,
                with_last_bn=False,
                with_last_bias=False,
                with_avg_pool=False,
                norm_cfg=dict(type="BN1d"),
            ),
        ),
    ),
    "SimSiam": dict(
        type="SimSiam",
        neck=dict(
            type="NonLinearNeck",
            in_channels=FEAT,
            hid_channels=32,
            out_channels=32,
            num_layers=3,
            with_last_bn_affine=False,
            with_avg_pool=True,
            norm_cfg=dict(type="BN1d"),
        ),
        head=dict(
            type="LatentPredictHead",
            loss=dict(type="CosineSimilarityLoss"),
            predictor=dict(
                type="NonLinearNeck",
                in_channels=32,
                hid_channels=16,
                out_channels=32,
                num_layers=2,
                with_bias=True,
                with_last_bn=False,
                with_avg_pool=False,
                norm_cfg=dict(type="BN1d"),
            ),
        ),
    ),
}


def model_cfg(algo: str) -> dict:
    model = copy.deepcopy(MODELS[algo])
    model.update(
        data_preprocessor=dict(
            type="SelfSupDataPreprocessor", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr_to_rgb=True
        ),
        backbone=BACKBONE,
    )
    return model


def make_cfg(
    algo: str,
    work_dir: str,
    launcher: str = "pytorch",
    n_views: int = N_VIEWS,
    num_views=None,
    hook: bool = True,
    recorder: bool = True,
    max_epochs: int = 1,
    n_images: int = N_IMAGES,
    fixed_views: bool = False,
    resume: bool = False,
    **hook_kwargs,
) -> Config:
    view = [dict(type="RandomResizedCrop", size=SIZE, scale=(0.2, 1.0), backend="pillow"), dict(type="RandomFlip", prob=0.5)]
    if fixed_views:
        view = [dict(type="HVSFixedCrop")]
    num_views = n_views if num_views is None else num_views
    custom_hooks = [dict(type="HardViewSelectionHook", n_views=n_views, **hook_kwargs)] if hook else []
    if recorder:
        custom_hooks.append(dict(type="HVSDistRecorder", out_dir=work_dir))
    cfg = Config(
        dict(
            default_scope="mmselfsup",
            model=model_cfg(algo),
            work_dir=work_dir,
            launcher=launcher,
            train_dataloader=dict(
                batch_size=BATCH,
                num_workers=0,
                drop_last=True,
                sampler=dict(type="DefaultSampler", shuffle=True),
                collate_fn=dict(type="default_collate"),
                dataset=dict(
                    type="HVSDistTinyImages",
                    n=n_images,
                    pipeline=[
                        dict(type="MultiView", num_views=num_views, transforms=[view]),
                        dict(type="PackSelfSupInputs", meta_keys=["img_path"]),
                    ],
                ),
            ),
            optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.05, momentum=0.9)),
            train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=max_epochs),
            default_hooks=dict(
                runtime_info=dict(type="RuntimeInfoHook"),
                timer=dict(type="IterTimerHook"),
                logger=dict(type="LoggerHook", interval=1),
                param_scheduler=dict(type="ParamSchedulerHook"),
                checkpoint=dict(type="CheckpointHook", interval=1),
            ),
            custom_hooks=custom_hooks,
            env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo")),
            randomness=dict(seed=0),
            log_level="WARNING",
            resume=resume,
            experiment_name=f"hvs_{algo}_{os.getpid()}_{next(_RUN_IDS)}",
            # CPU: DDP without device_ids (mmengine passes [LOCAL_RANK], which only GPU modules accept)
            model_wrapper_cfg=dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False),
        )
    )
    if launcher == "none":
        cfg.pop("model_wrapper_cfg")
    return cfg


def main() -> None:
    torch.set_num_threads(1)
    from mmengine.runner import Runner

    out_dir, algo = sys.argv[1], sys.argv[2]
    if not torch.cuda.is_available() and not torch.distributed.is_initialized():
        # mmengine 0.10's pytorch launcher calls torch.cuda.set_device(LOCAL_RANK) unconditionally;
        # on a CPU-only machine initialise the gloo group from torchrun's env first (the Runner then
        # skips its own init_dist and runs distributed as usual).
        from datetime import timedelta

        torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
    runner = Runner.from_cfg(make_cfg(algo, out_dir))
    runner.train()


if __name__ == "__main__":
    main()
