"""solo-learn's own scripts with HVS: ``main_pretrain.py`` through the launcher and the Hydra
callback on a tiny image folder (CPU), the ready configs run and resumed, ``main_linear.py`` on an HVS
checkpoint, 2-process CPU DDP. Skipped, with the command that runs them, where solo-learn is not
importable (CI installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from test_solo_learn_integration import REPO, SOLO_HOWTO, base_cfg  # noqa: E402

solo = pytest.importorskip("solo", reason=f"solo-learn is not installed (no usable registry build); {SOLO_HOWTO}")
from omegaconf import OmegaConf  # noqa: E402


def _solo_tree() -> Path:
    """solo-learn's source folder, which holds main_pretrain.py (not part of the installed package):
    HVS_SOLO_LEARN_ROOT, else the source scripts/_venv.sh kept next to the venv (<venv>/solo-learn-src)."""
    root = os.environ.get("HVS_SOLO_LEARN_ROOT")
    if root:
        if not (Path(root) / "main_pretrain.py").is_file():
            pytest.fail(f"HVS_SOLO_LEARN_ROOT={root} has no main_pretrain.py: point it at a solo-learn checkout")
        return Path(root)
    tree = Path(sys.prefix) / "solo-learn-src"
    if not (tree / "main_pretrain.py").is_file():
        pytest.skip(
            f"main_pretrain.py not found (HVS_SOLO_LEARN_ROOT unset, no {tree}); {SOLO_HOWTO}, "
            "or set HVS_SOLO_LEARN_ROOT to a solo-learn checkout"
        )
    return tree


def _image_folder(root: Path, n_classes: int = 2, per_class: int = 8, size: int = 32) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(n_classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(d / f"{i}.png")


def _run_main_pretrain(
    tmp_path: Path,
    tree: Path,
    cfg: Optional[dict] = None,
    *,
    launcher: bool = True,
    config_dir: Optional[Path] = None,
    config_name: str = "run",
    overrides: tuple = (),
    prefix: Optional[list] = None,
    script: str = "main_pretrain.py",
) -> str:
    """Run solo-learn's main_pretrain.py (through our launcher unless ``launcher=False``; ``prefix``:
    other arguments before the script, e.g. a driver) on ``cfg`` (written to tmp_path/conf/run.yaml)
    or on ``config_dir/config_name``; asserts exit 0, returns the output. ``script``: another of
    solo-learn's scripts (main_linear.py)."""
    if cfg is not None:
        (tmp_path / "conf").mkdir(exist_ok=True)
        (tmp_path / "conf" / f"{config_name}.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
        config_dir = tmp_path / "conf"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("HVS_SOLO_MAIN_PRETRAIN", None)
    if prefix is None:
        prefix = ["-m", "hvs_plugins.adapters.solo_learn.launch"] if launcher else []
    proc = subprocess.run(
        [sys.executable, *prefix, str(tree / script), "--config-path", str(config_dir), "--config-name", config_name, *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", ["simsiam", "dino_multicrop"])
def test_main_pretrain_one_epoch_through_launcher(tmp_path, config):
    tree = _solo_tree()
    _image_folder(tmp_path / "train")
    method = "dino" if config.startswith("dino") else config
    cfg = base_cfg(method, {"n_views": 4, "cap": 8}, small=(2 if config == "dino_multicrop" else 0), size=32)
    cfg["data"] = {"dataset": "custom", "train_path": str(tmp_path / "train"), "val_path": None, "format": "image_folder", "num_workers": 0}
    cfg["optimizer"]["batch_size"] = 4
    cfg.update(
        {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "enable_progress_bar": False,
            "checkpoint": {"enabled": True, "dir": str(tmp_path / "ckpt"), "frequency": 1},
            "hydra": {"output_subdir": None, "run": {"dir": str(tmp_path)}},
        }
    )
    out = _run_main_pretrain(tmp_path, tree, cfg)
    assert "[hvs] Hard View Selection on for" in out
    expected = "HVSDINO" if method == "dino" else "HVSSimSiam"
    assert f"[hvs] first selection by {expected}" in out, out[-4000:]
    # solo-learn's Checkpointer saved the selector's generator with the model
    ckpts = sorted((tmp_path / "ckpt").rglob("*.ckpt"))
    assert ckpts, out[-2000:]
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)  # plain data: loads with torch's default
    assert "hvs_selector" in state and "hvs_schedule" in state


@pytest.mark.slow
def test_main_pretrain_with_hydra_callback(tmp_path):
    """Route (A): the user keeps running `python main_pretrain.py`; the YAML declares the callback."""
    tree = _solo_tree()
    _image_folder(tmp_path / "train")
    cfg = base_cfg("simclr", {"n_views": 4}, size=32)
    cfg["data"] = {"dataset": "custom", "train_path": str(tmp_path / "train"), "val_path": None, "format": "image_folder", "num_workers": 0}
    cfg["optimizer"]["batch_size"] = 4
    cfg.update(
        {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "enable_progress_bar": False,
            "hydra": {
                "output_subdir": None,
                "run": {"dir": str(tmp_path)},
                "callbacks": {"hvs": {"_target_": "hvs_plugins.adapters.solo_learn.HVSHydraCallback"}},
            },
        }
    )
    out = _run_main_pretrain(tmp_path, tree, cfg, launcher=False)
    assert "[hvs] first selection by HVSSimCLR" in out, out[-4000:]


# A job preempted after its first epoch: solo-learn's Checkpointer saves the epoch's checkpoint, then
# the trainer stops. The run is otherwise the full one (same max_epochs, so the same learning-rate
# schedule and solo-learn's AutoResumer finds the checkpoint).
_PREEMPTED = """
import runpy
from solo.utils.checkpointer import Checkpointer

_save = Checkpointer.on_train_epoch_end


def on_train_epoch_end(self, trainer, module):
    _save(self, trainer, module)
    trainer.should_stop = True


Checkpointer.on_train_epoch_end = on_train_epoch_end
runpy.run_module("hvs_plugins.adapters.solo_learn.launch", run_name="__main__")
"""
_PRETRAINED: dict = {}  # ready config -> an HVS checkpoint of it (for the main_linear test)
READY = ["cifar_simsiam_hvs", "cifar_simclr_hvs", "cifar_dino_hvs"]


def _ready_overrides(tmp_path: Path, ckpt_dir: Path, name: str, max_epochs: int = 2, hvs: tuple = ("hvs.cap=16",)) -> list:
    """The shipped configs shrunk for CPU by command-line overrides only (1 step an epoch); their
    own checkpoint / auto_resume settings stay on. ``hvs``: overrides of the config's hvs block."""
    overrides = [
        "data.dataset=custom",
        f"data.train_path={tmp_path / 'train'}",
        "data.val_path=null",
        "data.num_workers=0",
        "accelerator=cpu",
        "devices='1'",
        "strategy=auto",
        "precision=32",
        "sync_batchnorm=False",
        f"max_epochs={max_epochs}",
        "+limit_train_batches=1",
        "optimizer.batch_size=4",
        f"checkpoint.dir={ckpt_dir}",
        "method_kwargs.proj_hidden_dim=64",
        "+enable_progress_bar=False",
        f"hydra.run.dir={tmp_path}",
        *hvs,
        "wandb.enabled=False",  # solo-learn's usual wandb override
    ]
    if name == "cifar_dino_hvs":
        overrides.append("method_kwargs.num_prototypes=64")
    return overrides


def _checkpoint(ckpt_dir: Path, epoch: int) -> tuple[Path, dict]:
    found = sorted(ckpt_dir.rglob(f"*-ep={epoch}.ckpt"))
    assert len(found) == 1, (epoch, found)
    return found[0], torch.load(found[0], map_location="cpu", weights_only=True)  # torch's default: plain data only


def _lrs(state: dict) -> tuple:
    return (state["lr_schedulers"][0]["_last_lr"], [g["lr"] for g in state["optimizer_states"][0]["param_groups"]])


@pytest.mark.slow
@pytest.mark.parametrize("name", READY)
def test_ready_configs_run_and_resume_through_the_launcher(tmp_path_factory, name):
    """The shipped configs (configs/solo_learn, auto_resume on), shrunk for CPU by overrides only: a job
    preempted after epoch 1 (checkpoint saved) resumes to epoch 2 through main_pretrain.py. Under
    torch >= 2.6 solo-learn's own SimSiam cannot (its scheduler's functools.partial fails the
    weights_only load); the HVS method's checkpoints hold plain data, and the resumed learning rates
    equal an uninterrupted run's."""
    tree = _solo_tree()
    tmp_path = tmp_path_factory.mktemp(name)
    _image_folder(tmp_path / "train")
    config_dir, ckpt_dir = REPO / "configs" / "solo_learn", tmp_path / "ckpt"
    (tmp_path / "preempted.py").write_text(_PREEMPTED)
    run = dict(config_dir=config_dir, config_name=name, overrides=tuple(_ready_overrides(tmp_path, ckpt_dir, name)))
    out = _run_main_pretrain(tmp_path, tree, prefix=[str(tmp_path / "preempted.py")], **run)
    expected = {
        "cifar_simsiam_hvs": "HVSSimSiam: 4 large candidates + 0 small",
        "cifar_simclr_hvs": "HVSSimCLR: 4 large candidates + 0 small",
        "cifar_dino_hvs": "HVSDINO: 4 large candidates + 16 small -> 10 crops",
    }[name]
    assert f"[hvs] first selection by {expected}" in out, out[-4000:]
    first, state = _checkpoint(ckpt_dir, 0)
    assert state["global_step"] == 1 and not list(ckpt_dir.rglob("*-ep=1.ckpt"))  # stopped after epoch 1
    assert not any(callable(v) for s in state["lr_schedulers"] for v in s.values())

    out = _run_main_pretrain(tmp_path, tree, **run)  # the same command again: solo-learn's auto_resume
    assert f"Resuming from previous checkpoint that matches specifications: '{first}'" in out, out[-4000:]
    last, resumed = _checkpoint(ckpt_dir, 1)
    assert resumed["global_step"] == 2 and resumed["epoch"] == 1
    assert {"hvs_selector", "hvs_schedule", "hvs_unscorable"} <= set(resumed)
    _PRETRAINED[name] = last
    if name == "cifar_simsiam_hvs":  # the scheduler partial's config: learning rates as without the break
        plain_dir = tmp_path / "uninterrupted"
        _run_main_pretrain(
            tmp_path, tree, config_dir=config_dir, config_name=name, overrides=tuple(_ready_overrides(tmp_path, plain_dir, name))
        )
        _, plain = _checkpoint(plain_dir, 1)
        assert _lrs(resumed) == _lrs(plain)
        assert plain["lr_schedulers"][0]["_last_lr"] != state["lr_schedulers"][0]["_last_lr"]  # warmup moved on


@pytest.mark.slow
def test_main_linear_loads_an_hvs_checkpoint(tmp_path):
    """solo-learn's main_linear.py (torch.load with torch's default weights_only) reads a SimSiam HVS
    checkpoint and trains a step on its backbone (5 classes: main_linear reports top-5 accuracy)."""
    tree = _solo_tree()
    ckpt = _PRETRAINED.get("cifar_simsiam_hvs")
    if ckpt is None or not ckpt.is_file():  # run alone: pretrain 1 tiny epoch with HVS first
        _image_folder(tmp_path / "train")
        _run_main_pretrain(
            tmp_path,
            tree,
            config_dir=REPO / "configs" / "solo_learn",
            config_name="cifar_simsiam_hvs",
            overrides=tuple(_ready_overrides(tmp_path, tmp_path / "ckpt", "cifar_simsiam_hvs", 1)),
        )
        ckpt, _ = _checkpoint(tmp_path / "ckpt", 0)
    _image_folder(tmp_path / "linear_data", n_classes=5, per_class=2, size=16)
    data = str(tmp_path / "linear_data")
    cfg = {
        "name": "hvs-linear",
        "pretrained_feature_extractor": str(ckpt),
        "backbone": {"name": "resnet18"},
        "pretrain_method": "simsiam",
        "data": {"dataset": "custom", "train_path": data, "val_path": data, "format": "image_folder", "num_workers": 0},
        "optimizer": {"name": "sgd", "batch_size": 5, "lr": 0.1, "weight_decay": 0.0},
        "scheduler": {"name": "none"},
        "auto_resume": {"enabled": False},
        "checkpoint": {"enabled": True, "dir": str(tmp_path / "linear"), "frequency": 1},
        "max_epochs": 1,
        "limit_train_batches": 1,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "devices": "1",
        "accelerator": "cpu",
        "strategy": "auto",
        "precision": 32,
        "enable_progress_bar": False,
        "hydra": {"output_subdir": None, "run": {"dir": str(tmp_path)}},
    }
    out = _run_main_pretrain(tmp_path, tree, cfg, launcher=False, config_name="linear", script="main_linear.py")
    assert "`Trainer.fit` stopped: `max_epochs=1` reached" in out, out[-4000:]
    _, linear = _checkpoint(tmp_path / "linear", 0)
    pretrained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    weights = [k for k, v in pretrained.items() if k.startswith("backbone.") and v.is_floating_point() and "running_" not in k]
    assert weights and all(torch.equal(linear["state_dict"][k], pretrained[k]) for k in weights)  # frozen, loaded


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "mocov3"])
def test_launcher_two_process_cpu_ddp(tmp_path, method):
    """DDP workers re-run the launcher (the script path travels in HVS_SOLO_MAIN_PRETRAIN) and
    SimCLR / MoCo v3 scores gather the other rank's embeddings as solo-learn's losses do."""
    tree = _solo_tree()
    _image_folder(tmp_path / "train")
    cfg = base_cfg(method, {"n_views": 4}, size=32)
    cfg["data"] = {"dataset": "custom", "train_path": str(tmp_path / "train"), "val_path": None, "format": "image_folder", "num_workers": 0}
    cfg["optimizer"]["batch_size"] = 4
    cfg.update(
        {
            "max_epochs": 1,
            "limit_train_batches": 1,
            "enable_progress_bar": False,
            "devices": "2",
            "strategy": "ddp",
            "hydra": {"output_subdir": None, "run": {"dir": str(tmp_path)}},
        }
    )
    out = _run_main_pretrain(tmp_path, tree, cfg)
    assert out.count("[hvs] first selection by") == 2, out[-4000:]  # both ranks select


_DDP_WORKER = """
import os, sys, torch, torch.distributed as dist
from solo.losses.simclr import simclr_loss_func
from solo.losses.mocov3 import mocov3_loss_func
from solo.losses.nnclr import nnclr_loss_func
from hvs_plugins import ntxent_pair_losses
from hvs_plugins.adapters.solo_learn.method import _gather_all
from hvs_plugins.adapters.solo_learn.scoring import mocov3_pair_losses, nnclr_pair_losses

def run(rank, world, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    n, m, d, t = 4, 5, 8, 0.2
    q, k = torch.randn(n, m, d, generator=g), torch.randn(n, m, d, generator=g)
    pairs = torch.combinations(torch.arange(n), 2)
    idx = torch.arange(m) + rank * m
    zall, off = _gather_all(q)
    s = ntxent_pair_losses(q, pairs, t, all_embeddings=zall, offset=off)
    kall, off = _gather_all(k)
    m3 = mocov3_pair_losses(q, k, pairs, t, kall, off)
    nc = nnclr_pair_losses(q, k, pairs, t, kall, off)
    worst = 0.0
    for i, (a, b) in enumerate(pairs.tolist()):
        ref_s = simclr_loss_func(torch.cat([q[a], q[b]]), indexes=idx.repeat(2), temperature=t)
        ref_m = mocov3_loss_func(q[a], k[b], t) + mocov3_loss_func(q[b], k[a], t)
        ref_n = nnclr_loss_func(q[a], k[b], t) / 2 + nnclr_loss_func(q[b], k[a], t) / 2
        for ours, ref in ((s, ref_s), (m3, ref_m), (nc, ref_n)):
            worst = max(worst, abs(float(ours[i].mean()) - float(ref)))
    print(f"rank {rank} worst {worst:.3e}", flush=True)
    assert worst < 1e-5, worst
    dist.destroy_process_group()

if __name__ == "__main__":
    import torch.multiprocessing as mp
    mp.spawn(run, args=(2, "file://" + sys.argv[1]), nprocs=2)
"""


@pytest.mark.slow
def test_gathered_scores_equal_solo_losses_under_two_process_ddp(tmp_path):
    """With torch.distributed, SimCLR / MoCo v3 / NNCLR scores use every rank's negatives and equal
    solo-learn's (gathering) loss functions on each rank."""
    script = tmp_path / "ddp_worker.py"
    script.write_text(_DDP_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init")], env=env, capture_output=True, text=True, timeout=600
    )  # as the launcher runs: loaded CI machines
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "rank 0 worst" in out and "rank 1 worst" in out
