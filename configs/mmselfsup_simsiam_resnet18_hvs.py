# SimSiam, ResNet-18, with Hard View Selection (HVS, Ferreira et al. 2023) for MMSelfSup 1.x.
#
# Settings follow MMSelfSup's own SimSiam recipe (selfsup/simsiam/simsiam_resnet50_8xb32-coslr-
# 100e_in1k.py: SGD lr 0.05 for 8 GPUs x 32 images, fixed predictor LR, cosine schedule, the
# MoCo v2 view pipeline) with a ResNet-18 backbone. The file is self-contained on purpose:
# inheriting with `_base_ = 'mmselfsup::selfsup/simsiam/...'` needs `pkg_resources`, which
# setuptools >= 81 no longer ships (mmengine 0.10.7's `is_installed` imports it). With
# setuptools < 81 you can instead add the HVS lines below to that base config.
#
# Data: a folder with one subfolder per class (labels are ignored), e.g. ImageNet's train/:
#   data_root='data/imagenet/', data_prefix='train/'.
# Run: Runner.from_cfg(Config.fromfile('configs/mmselfsup_simsiam_resnet18_hvs.py')).train()
#   or MMSelfSup's tools/train.py / `mim train mmselfsup <this file>`.

default_scope = "mmselfsup"

# ---- HVS, line 1: make the hook importable from the config
custom_imports = dict(imports=["hvs_plugins.adapters.mmselfsup"], allow_failed_imports=False)

# ---- HVS, line 2: the hook. n_views=4 candidates per image (the paper's setting). Options:
#   resolution_scale=0.5       select on half-resolution copies (paper: keeps accuracy, cheaper)
#   chunk_size=64              cap the selection forward's memory
#   autocast_dtype='bfloat16'  low-precision selection forward; interval=k: select every k-th step
lr = 0.05
custom_hooks = [
    dict(type="SimSiamHook", priority="HIGH", fix_pred_lr=True, lr=lr),
    dict(type="HardViewSelectionHook", n_views=4),
]

# ---- model
model = dict(
    type="SimSiam",
    data_preprocessor=dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr_to_rgb=True),
    backbone=dict(type="ResNet", depth=18, in_channels=3, out_indices=[4], norm_cfg=dict(type="SyncBN"), zero_init_residual=True),
    neck=dict(
        type="NonLinearNeck",
        in_channels=512,
        hid_channels=2048,
        out_channels=2048,
        num_layers=3,
        with_last_bn_affine=False,
        with_avg_pool=True,
    ),
    head=dict(
        type="LatentPredictHead",
        loss=dict(type="CosineSimilarityLoss"),
        predictor=dict(
            type="NonLinearNeck",
            in_channels=2048,
            hid_channels=512,
            out_channels=2048,
            with_avg_pool=False,
            with_last_bn=False,
            with_last_bias=True,
        ),
    ),
)

# ---- data: N candidate views per image from the usual SimSiam / MoCo v2 augmentations.
# The hook checks num_views == n_views before the first iteration and hands SimSiam the hardest
# pair of each image.
crop_size = 224
view_pipeline = [
    dict(type="RandomResizedCrop", size=crop_size, scale=(0.2, 1.0), backend="pillow"),
    dict(type="RandomApply", transforms=[dict(type="ColorJitter", brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], prob=0.8),
    dict(type="RandomGrayscale", prob=0.2, keep_channels=True, channel_weights=(0.114, 0.587, 0.2989)),
    dict(type="RandomGaussianBlur", sigma_min=0.1, sigma_max=2.0, prob=0.5),
    dict(type="RandomFlip", prob=0.5),
]
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="MultiView", num_views=4, transforms=[view_pipeline]),  # HVS: 4 candidates (was 2)
    dict(type="PackSelfSupInputs", meta_keys=["img_path"]),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=8,
    drop_last=True,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="mmcls.CustomDataset", data_root="data/imagenet/", data_prefix="train/", pipeline=train_pipeline),
)

# ---- schedule: SGD, fixed predictor LR (SimSiamHook), cosine over 100 epochs
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=lr, weight_decay=1e-4, momentum=0.9),
    paramwise_cfg=dict(custom_keys={"predictor": dict(fix_lr=True)}),
)
param_scheduler = [dict(type="CosineAnnealingLR", T_max=100, by_epoch=True, begin=0, end=100)]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=100)

# ---- runtime
default_hooks = dict(
    runtime_info=dict(type="RuntimeInfoHook"),
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=10, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
log_processor = dict(window_size=10)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SelfSupVisualizer", vis_backends=vis_backends, name="visualizer")
log_level = "INFO"
load_from = None
resume = False  # resuming under torch >= 2.6: the hook sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
