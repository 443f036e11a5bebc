"""Misuse and faults, per host: each case fails loudly with a message that names the fix, or (for
faults) degrades as documented.

Cases: n_views < 2; the pipeline delivers a different number of views than configured; views of
different shapes; unsupported method or loss; NaN/inf in model outputs (counted fallback, training
continues, a warning names the count); a selection chunk larger than the batch (clamped); resuming
from a checkpoint made without HVS and vice versa; interrupting and resuming training with HVS on
gives the same selections as an uninterrupted run (the selector's generator is checkpointed).

Host sections skip, with the reason shown, where the host is not installed (solo-learn: CI
installs it; elsewhere `HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3 ./scripts/test`).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hvs_plugins import HardViewSelector, HVSUnscorableWarning, negative_cosine_pair_losses, select_hardest
from robustness_common import one_thread  # noqa: F401 (autouse fixture: one thread per test)
from robustness_common import M, EMPTY, NOT_TENSOR, ONE_SAMPLE_FALLBACK, needs_lightly, needs_lightning, views_of


# ===================================================================== core
def test_core_n_views_below_two():
    for n in (1, 0, -3):
        with pytest.raises(
            ValueError,
            match=r"n_views must be >= 2 \(got .*\): HVS compares pairs of candidate "
            r"views; set n_views=4",
        ):
            HardViewSelector(n_views=n)
    with pytest.raises(TypeError, match="n_views must be an int"):
        HardViewSelector(n_views=2.0)


def test_core_views_count_and_shape_checked():
    sel = HardViewSelector(4)
    fwd = lambda x: x.flatten(1)[:, :8]  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"expected 4 candidate views per sample, got 3: make the data pipeline "
        r"emit n_views=4 views \(or set n_views=3\)",
    ):
        sel.forward_views(fwd, views_of(3), 4)
    with pytest.raises(ValueError, match="candidate views must all have the same shape"):  # one joint forward
        HardViewSelector(4, joint_views=True).forward_views(fwd, views_of(sizes=[16, 16, 16, 12]), 4)
    # one forward per view takes candidates of different sizes (outputs of one shape)
    pool = lambda x: x.mean((2, 3))  # noqa: E731
    assert sel.forward_views(pool, views_of(sizes=[16, 16, 16, 12]), 4)[0].shape == (4, M, 3)


def test_core_chunk_larger_than_batch_is_clamped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(8))
    net(torch.randn(2, 3, 16, 16))
    vs = views_of()
    pair_loss = lambda z, pairs: negative_cosine_pair_losses(z, z.roll(1, -1), pairs)  # noqa: E731
    ref = HardViewSelector(4).select(net, vs, pair_loss, [net])
    big = HardViewSelector(4, chunk_size=10_000).select(net, vs, pair_loss, [net])
    assert torch.equal(ref.pair_losses, big.pair_losses) and torch.equal(ref.index, big.index)
    odd = HardViewSelector(4, chunk_size=4).select(net, vs, pair_loss, [net])  # 4 + 2 (last chunk smaller)
    assert odd.pair_losses.shape == (6, M)
    with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1"):
        HardViewSelector(4, chunk_size=0)


def test_core_non_finite_never_wins_and_falls_back_with_own_generator():
    losses = torch.tensor(
        [[1.0, float("nan"), float("nan"), 0.5], [2.0, float("inf"), float("nan"), float("nan")], [0.0, 3.0, float("-inf"), float("nan")]]
    )
    pairs = torch.combinations(torch.arange(3), 2)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = select_hardest(losses, pairs, g1), select_hardest(losses, pairs, g2)
    assert a.index[:2].tolist() == [1, 2] and a.index[3] == 0  # inf (sample 1) is non-finite: never chosen
    assert a.fallback.tolist() == [False, False, True, False]
    assert torch.equal(a.index, b.index)  # the fallback draw is seeded


def test_core_fallback_warning_names_the_count():
    from hvs_plugins import HVSFallbackWarning, warn_fallbacks

    with pytest.warns(
        HVSFallbackWarning,
        match=r"HVS: 2 of 5 samples had no finite pair loss \(NaN/inf in the "
        r"model's outputs during selection\); they train on a random candidate pair",
    ):
        assert warn_fallbacks(torch.tensor([True, False, True, False, False])) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_fallbacks(torch.zeros(5, dtype=torch.bool)) == 0


# ===================================================================== lightly
class SimSiamNet(nn.Module):
    """lightly's SimSiam layout: forward returns (z, p); ``poison`` puts NaN/inf into chosen samples'
    outputs, during the no-grad selection forward only (a selection-time overflow)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projection = nn.Linear(8, 16)
        self.prediction = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 16))
        self.poison: dict[int, float] = {}

    def forward(self, x):
        z = self.projection(self.backbone(x))
        p = self.prediction(z)
        if self.poison and not torch.is_grad_enabled():
            p = p.clone()
            for i, value in self.poison.items():
                p[i] = value
        return z.detach(), p


def _simsiam_step(net, crit, views, opt):
    x0, x1 = crit.select(views, net)
    (z0, p0), (z1, p1) = net(x0), net(x1)
    loss = 0.5 * (crit(p0, z1) + crit(p1, z0))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


@needs_lightly
def test_lightly_n_views_below_two():
    from lightly.loss import NegativeCosineSimilarity

    from hvs_plugins.adapters.lightly import HVSLoss

    with pytest.raises(ValueError, match=r"n_views must be >= 2 \(got 1\)"):
        HVSLoss(NegativeCosineSimilarity(), n_views=1)


@needs_lightly
def test_lightly_wrong_number_of_views():
    from lightly.loss import DINOLoss, NegativeCosineSimilarity

    from hvs_plugins.adapters.lightly import HVSLoss

    net = SimSiamNet()
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    for n in (2, 3, 5):
        with pytest.raises(
            ValueError,
            match=rf"HVSLoss\(n_views=4\) got {n} views per sample: wrap the transform "
            rf"with CandidateViews\(transform, n_views=4\) \(or set n_views={n}\)",
        ):
            crit.select(views_of(n), net)
    dino = HVSLoss(DINOLoss(output_dim=16))
    with pytest.raises(ValueError, match=r"DINO HVS expects 2 candidates per local crop, got 3 local views"):
        dino.select(views_of(4) + views_of(3, size=8), lambda x: net(x)[1], epoch=0)
    with pytest.raises(ValueError, match=r"DINO HVS needs 4 global candidates"):
        dino.select(views_of(3), lambda x: net(x)[1], epoch=0)


@needs_lightly
def test_lightly_views_of_different_shapes():
    from lightly.loss import NegativeCosineSimilarity

    from hvs_plugins.adapters.lightly import HVSLoss

    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    with pytest.raises(
        ValueError,
        match=r"candidate views differ in size \(sizes by candidate: 0: 16x16, 1: 16x16, 2: 16x16, "
        r"3: 12x12\), and slot 1 of the scored pairs takes candidates of different sizes.*groups='interleaved'",
    ):
        crit.select(views_of(sizes=[16, 16, 16, 12]), SimSiamNet())


@needs_lightly
def test_lightly_unsupported_loss_names_the_fix():
    from lightly.loss import BarlowTwinsLoss

    from hvs_plugins.adapters.lightly import HVSLoss

    with pytest.raises(
        NotImplementedError,
        match=r"(?s)HVS has no per-sample loss for BarlowTwinsLoss\. Supported "
        r"lightly losses: .*NTXentLoss.*register_pair_loss",
    ):
        HVSLoss(BarlowTwinsLoss())
    with pytest.raises(TypeError, match="HVSLoss wraps a lightly loss module"):
        HVSLoss(lambda a, b: a)


@needs_lightly
def test_lightly_non_finite_outputs_fall_back_with_a_warning_and_training_continues():
    from lightly.loss import NegativeCosineSimilarity

    from hvs_plugins.adapters.lightly import HVSLoss

    net = SimSiamNet()
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    net.poison = {0: float("nan"), 1: float("inf")}
    with pytest.warns(UserWarning, match=r"HVS: 2 of 6 samples had no finite pair loss"):
        loss = _simsiam_step(net, crit, views_of(), opt)
    sel = crit.last_selection
    assert sel.fallback.tolist() == [True, True, False, False, False, False]
    assert crit.last_stats.n_fallback == 2
    assert bool(torch.isfinite(sel.pair_losses[:, 2:]).all())
    assert torch.equal(sel.index[2:], sel.pair_losses[:, 2:].argmax(0))  # other samples: normal argmax
    assert torch.isfinite(loss)  # the training step itself (grad on) is clean: training continues
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # it trained
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    net.poison = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without fallbacks
        _simsiam_step(net, crit, views_of(seed=1), opt)


@needs_lightly
def test_lightly_dino_non_finite_falls_back_with_a_warning():
    from lightly.loss import DINOLoss

    from hvs_plugins.adapters.lightly import HVSLoss

    net = SimSiamNet()
    net.poison = {3: float("nan")}
    crit = HVSLoss(DINOLoss(output_dim=16), cap=8)
    with pytest.warns(UserWarning, match=r"HVS: 1 of 6 samples had no finite"):
        out = crit.select(views_of(4) + views_of(4, size=8), lambda x: net(x)[1], epoch=0)
    assert len(out) == 4 and crit.last_selection.fallback.tolist() == [False] * 3 + [True] + [False] * 2


@needs_lightly
def test_lightly_chunk_larger_than_batch():
    from lightly.loss import NegativeCosineSimilarity

    from hvs_plugins.adapters.lightly import HVSLoss

    net, vs = SimSiamNet(), views_of()
    ref = HVSLoss(NegativeCosineSimilarity(), chunk_size=None)
    big = HVSLoss(NegativeCosineSimilarity(), chunk_size=4096)
    a, b = ref.select(vs, net), big.select(vs, net)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ref.last_selection.pair_losses, big.last_selection.pair_losses)


class _Holder(nn.Module):
    """What a LightningModule holds: the networks and ``self.criterion``."""

    def __init__(self, criterion: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 16)
        self.criterion = criterion


@needs_lightly
@pytest.mark.parametrize("loss", ["dino", "moco"])
def test_lightly_checkpoint_without_hvs_and_vice_versa(loss):
    """The checkpoint layout is the same with and without HVS (the wrapped loss's buffers — DINO
    center, memory bank — keep their keys), so either side loads the other's state strictly."""
    from lightly.loss import DINOLoss, NTXentLoss

    from hvs_plugins.adapters.lightly import HVSLoss

    def make():
        return DINOLoss(output_dim=16) if loss == "dino" else NTXentLoss(memory_bank_size=(8, 16))

    plain, hvs = _Holder(make()), _Holder(HVSLoss(make()))
    assert plain.state_dict().keys() == hvs.state_dict().keys()
    with torch.no_grad():
        for t in plain.state_dict().values():
            t.add_(1.5)
    hvs.load_state_dict(plain.state_dict())  # strict: a run without HVS resumed with HVS
    for k, v in plain.state_dict().items():
        assert torch.equal(hvs.state_dict()[k], v), k
    back = _Holder(make())
    back.load_state_dict(hvs.state_dict())  # strict: an HVS run resumed (or evaluated) without HVS
    for k, v in plain.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # the wrapper itself still loads its own (older, prefixed) layout
    prefixed = {
        ("criterion.criterion." + k[len("criterion.") :] if k.startswith("criterion.") else k): v for k, v in plain.state_dict().items()
    }
    HVSLoss_holder = _Holder(HVSLoss(make()))
    HVSLoss_holder.load_state_dict(prefixed)


def _lightly_resume_module(ckpt_selector: bool, hvs: bool = True):
    """A LightningModule (DINO, capped search: the selector's generator matters); ``hvs=False``: the
    same module without HVS (plain DINOLoss, trains on the first candidate of every crop)."""
    import pytorch_lightning as pl
    from lightly.loss import DINOLoss

    from hvs_plugins.adapters.lightly import HVSLoss

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16)
            )

        def forward(self, x):
            return self.net(x)

    class DINOModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.student, self.teacher = Student(), Student()
            self.teacher.requires_grad_(False)
            loss = DINOLoss(output_dim=16, warmup_teacher_temp_epochs=0)
            self.criterion = HVSLoss(loss, cap=4, seed=3) if hvs else loss
            self.picks: list[tuple[int, torch.Tensor, torch.Tensor]] = []

        def training_step(self, batch, batch_idx):
            views, _ = batch
            if not hvs:
                crops = views[:2] + views[4::2]
                return self.criterion([self.teacher(c) for c in crops[:2]], [self.student(c) for c in crops], epoch=self.current_epoch)
            crops = self.criterion.select(views, self.student, self.teacher, epoch=self.current_epoch)
            ch = self.criterion.last_selection
            self.picks.append((self.global_step, ch.globals_.clone(), ch.locals_.clone()))
            return self.criterion([self.teacher(c) for c in crops[:2]], [self.student(c) for c in crops], epoch=self.current_epoch)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            with torch.no_grad():
                for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                    pt.mul_(0.9).add_(ps, alpha=0.1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9)

        # the two lines a lightly user adds to checkpoint HVS's own random stream
        def on_save_checkpoint(self, checkpoint):
            if ckpt_selector and hvs:
                checkpoint["hvs_selector"] = self.criterion.selector_state_dict()

        def on_load_checkpoint(self, checkpoint):
            if ckpt_selector and hvs and "hvs_selector" in checkpoint:
                self.criterion.load_selector_state_dict(checkpoint["hvs_selector"])

    return DINOModule()


def _lightly_loader():
    data = []
    for i in range(8):
        g = torch.Generator().manual_seed(i)
        data.append(([torch.randn(3, 16, 16, generator=g) for _ in range(4)] + [torch.randn(3, 8, 8, generator=g) for _ in range(4)], i))
    return torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)


def _trainer(max_epochs):
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )


@needs_lightning
def test_lightly_lightning_resume_across_hvs_on_and_off(tmp_path):
    """Through Lightning's own resume (strict load, optimizer state, loops): a run without HVS resumed
    with HVS, and an HVS run resumed without it."""
    for first_hvs in (False, True):
        first = _lightly_resume_module(True, hvs=first_hvs)
        trainer = _trainer(1)
        trainer.fit(first, _lightly_loader())
        path = tmp_path / f"first_hvs_{first_hvs}.ckpt"
        trainer.save_checkpoint(path)
        center = first.criterion.state_dict()["center"].clone()
        second = _lightly_resume_module(True, hvs=not first_hvs)
        _trainer(2).fit(second, _lightly_loader(), ckpt_path=path)
        assert second.current_epoch == 2 and second.global_step == 4
        if not first_hvs:
            assert len(second.picks) == 2  # HVS on for the resumed epoch
        loaded = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]["criterion.center"]
        assert torch.equal(loaded, center)  # the DINO center travelled under its usual key


@needs_lightning
def test_lightly_interrupt_and_resume_gives_the_same_selections(tmp_path):
    full = _lightly_resume_module(True)
    _trainer(3).fit(full, _lightly_loader())
    assert len(full.picks) == 6
    first = _lightly_resume_module(True)
    trainer = _trainer(1)
    trainer.fit(first, _lightly_loader())
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = _lightly_resume_module(True)
    _trainer(3).fit(resumed, _lightly_loader(), ckpt_path=tmp_path / "epoch1.ckpt")
    picks = first.picks + resumed.picks
    assert [s for s, _, _ in picks] == [s for s, _, _ in full.picks]
    for (s, g, l), (_, g2, l2) in zip(full.picks, picks):
        assert torch.equal(g, g2) and torch.equal(l, l2), f"step {s} selected differently after resuming"
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # negative control: without the selector's state the capped search draws other combinations
    first_nc = _lightly_resume_module(False)
    t = _trainer(1)
    t.fit(first_nc, _lightly_loader())
    t.save_checkpoint(tmp_path / "nc.ckpt")
    resumed_nc = _lightly_resume_module(False)
    _trainer(3).fit(resumed_nc, _lightly_loader(), ckpt_path=tmp_path / "nc.ckpt")
    assert any(not (torch.equal(g, g2) and torch.equal(l, l2)) for (_, g, l), (_, g2, l2) in zip(full.picks[2:], resumed_nc.picks))


# ===================================================================== bad input (issue 13 item 5)
def test_core_bad_input_names_cause_and_fix():
    from hvs_plugins import check_candidate_views

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(8))
    net(torch.randn(2, 3, 16, 16))
    pair_loss = lambda z, pairs: negative_cosine_pair_losses(z, z.roll(1, -1), pairs)  # noqa: E731
    sel = HardViewSelector(4)
    with pytest.raises(ValueError, match=EMPTY):
        sel.select(net, views_of(m=0), pair_loss, [net])
    with pytest.raises(ValueError, match=EMPTY):  # the runner's own forward, too
        sel.forward_views(net, views_of(m=0), 4)
    with pytest.raises(TypeError, match=NOT_TENSOR):
        sel.select(net, ["a.png"] * 4, pair_loss, [net])
    with pytest.warns(HVSUnscorableWarning, match=ONE_SAMPLE_FALLBACK):  # trains on pair 0, counted
        assert sel.select(net, views_of(m=1), pair_loss, [net]).index.tolist() == [0]
    assert sel.unscorable.count == 1
    net.eval()  # eval-mode BatchNorm (running statistics) handles one sample: no error
    assert sel.select(net, views_of(m=1), pair_loss, [net]).index.shape == (1,)
    with pytest.raises(TypeError, match="must be a list of N tensors"):
        check_candidate_views("views")


@needs_lightly
def test_lightly_bad_input_names_cause_and_fix():
    from lightly.loss import DINOLoss, NegativeCosineSimilarity

    from hvs_plugins.adapters.lightly import HVSLoss

    net = SimSiamNet()
    crit = HVSLoss(NegativeCosineSimilarity(), n_views=4)
    dino = HVSLoss(DINOLoss(output_dim=16))
    student = lambda x: net(x)[1]  # noqa: E731
    with pytest.raises(ValueError, match=EMPTY):
        crit.select(views_of(m=0), net)
    with pytest.raises(ValueError, match=EMPTY):
        dino.select(views_of(4, m=0) + views_of(4, m=0, size=8), student, modules=[net], epoch=0)
    with pytest.raises(TypeError, match=NOT_TENSOR):
        crit.select(["a.png", "b.png", "c.png", "d.png"], net)
    # 1 sample under train-mode BatchNorm: a plain pair (candidates 0 and 1), counted, one warning
    one = views_of(m=1)
    with pytest.warns(HVSUnscorableWarning, match=ONE_SAMPLE_FALLBACK):
        x0, x1 = crit.select(one, net)
    assert torch.equal(x0, one[0]) and torch.equal(x1, one[1]) and crit.unscorable_batches == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        crit.select(one, net)
    assert crit.unscorable_batches == 2
    with pytest.warns(HVSUnscorableWarning, match=ONE_SAMPLE_FALLBACK):
        out = dino.select(views_of(4, m=1) + views_of(4, m=1, size=8), student, modules=[net], epoch=0)
    assert len(out) == 4 and dino.unscorable_batches == 1
