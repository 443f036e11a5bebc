"""2-process CPU DDP (gloo) run of lightly + HVSLoss through pytorch_lightning's DDP strategy.

Usage: python lightly_ddp.py OUT_DIR {simclr|dino} [STEPS]

Lightning re-launches this script for rank 1 (its subprocess launcher). Every rank writes
OUT_DIR/rank{r}.pt: per step the candidate views it received, the state before the step, the
recorded selection (index, pair losses / DINO combination), and the final state (parameters,
buffers, the DINO center). The test compares the ranks and recomputes every selection in one
process.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import pytorch_lightning as pl
import torch
from lightly.loss import DINOLoss, NTXentLoss
from lightly.models.modules import DINOProjectionHead
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from hvs_plugins.adapters.lightly import HVSLoss

torch.set_num_threads(1)
N_VIEWS, SIZE, N_SAMPLES, BATCH, D = 4, 16, 16, 4, 16
N_LOCAL_CAND, LOCAL_SIZE = 4, 8  # DINO: 2 local crops, 2 candidates each


def tiny_net(out: int = D) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, out),
    )


class CandidateData(torch.utils.data.Dataset):
    """Deterministic candidate views per index (what CandidateViews would emit)."""

    def __init__(self, method: str) -> None:
        self.method = method

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(1000 + i)
        views = [torch.randn(3, SIZE, SIZE, generator=g) for _ in range(N_VIEWS)]
        if self.method == "dino":
            views += [torch.randn(3, LOCAL_SIZE, LOCAL_SIZE, generator=g) for _ in range(N_LOCAL_CAND)]
        return views, i


class DINOHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_net(16)
        torch.manual_seed(1)
        self.head = DINOProjectionHead(16, 32, 8, 64, batch_norm=False)

    def forward(self, x):
        return self.head(self.backbone(x))


class Module(pl.LightningModule):
    def __init__(self, method: str, cap: int = 8) -> None:
        super().__init__()
        self.method = method
        self.records: list[dict] = []
        if method == "simclr":
            self.net = tiny_net()
            self.criterion = HVSLoss(NTXentLoss(temperature=0.5, gather_distributed=True), n_views=N_VIEWS)
        else:
            self.student = DINOHead()
            self.teacher = DINOHead()  # same seeds: same start
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.criterion = HVSLoss(DINOLoss(output_dim=64, warmup_teacher_temp_epochs=0), cap=cap, seed=0)

    def _state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def training_step(self, batch, batch_idx):
        views, idx = batch
        rec = {"step": self.global_step, "views": [v.detach().clone() for v in views], "idx": idx.clone(), "pre": self._state()}
        if self.method == "simclr":
            x0, x1 = self.criterion.select(views, self.net)
            sel = self.criterion.last_selection
            rec.update(index=sel.index.clone(), pair_losses=sel.pair_losses.clone())
            loss = self.criterion(self.net(x0), self.net(x1))
        else:
            crops = self.criterion.select(views, self.student, self.teacher, epoch=self.current_epoch)
            ch = self.criterion.last_selection
            rec.update(
                globals_=ch.globals_.clone(),
                locals_=ch.locals_.clone(),
                losses=ch.losses.clone(),
                candidate_losses=ch.candidate_losses.clone(),
                center=self.criterion.criterion.center.clone(),
            )
            t_out = [self.teacher(c) for c in crops[:2]]
            s_out = [self.student(c) for c in crops]
            loss = self.criterion(t_out, s_out, epoch=self.current_epoch)
        rec["loss"] = loss.detach().clone()
        self.records.append(rec)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.method == "dino":
            with torch.no_grad():
                for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                    pt.mul_(0.9).add_(ps.detach(), alpha=0.1)

    def configure_optimizers(self):
        params = self.net.parameters() if self.method == "simclr" else self.student.parameters()
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def on_train_end(self):
        out = {
            "records": self.records,
            "final": self._state(),
            "rank": self.global_rank,
            "world": self.trainer.world_size,
            "selector": self.criterion.selector_state_dict(),
        }
        torch.save(out, os.path.join(sys.argv[1], f"rank{self.global_rank}.pt"))


def main() -> None:
    method = sys.argv[2]  # argv[1]: the output folder, where the callback writes
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    pl.seed_everything(0, workers=True)
    model = Module(method)
    loader = torch.utils.data.DataLoader(CandidateData(method), batch_size=BATCH, shuffle=True, num_workers=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120), find_unused_parameters=False),
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader)


if __name__ == "__main__":
    main()
