"""The hard-view generator in lightly training loops (real lightly losses, heads and transforms):
adversarial direction, host state untouched, exact resume, generation then selection with HVSLoss,
normalisation from lightly transforms, errors, and 2-process DDP."""

from __future__ import annotations

import copy
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("lightly")
from lightly.loss import NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import SimCLRProjectionHead  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402
from lightly.transforms.utils import IMAGENET_NORMALIZE  # noqa: E402

from hvs_plugins.adapters.lightly import CandidateViews, HardViewGenerator, HVSLoss, normalize_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(IMAGENET_NORMALIZE["mean"]).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_NORMALIZE["std"]).view(1, 3, 1, 1)
SIZE, BATCH = 16, 8


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pil_images(n: int, seed: int = 0) -> list:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    x = nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(24, 24), mode="bilinear", align_corners=False)
    return [Image.fromarray((img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()) for img in x]


def lightly_batch(transform, n: int = BATCH, seed: int = 0) -> list[torch.Tensor]:
    """Views from a lightly transform, stacked per view: what lightly's collate gives as batch[0]."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        per_image = [transform(img) for img in pil_images(n, seed)]
    return [torch.stack(v) for v in zip(*per_image)]


class SimCLR(nn.Module):
    """lightly's SimCLR example model, small: a ConvNet backbone + SimCLRProjectionHead."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.projection_head = SimCLRProjectionHead(16, 32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))


@pytest.fixture(scope="module")
def views() -> list[torch.Tensor]:
    return lightly_batch(SimCLRTransform(input_size=SIZE, gaussian_blur=0.0))


def small_gen(**kw) -> HardViewGenerator:
    return HardViewGenerator(**{"width": 4, "n_blocks": 2, "stem_kernel": 3, "eps": 0.1, **kw})


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bitwise(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what} changed: {diff[:6]}"


# ----------------------------------------------------------------------------- lightly conventions
def test_normalisation_from_lightly_transforms_and_budget_in_pixel_units(views):
    t = SimCLRTransform(input_size=SIZE)
    assert normalize_of(t) == {"mean": IMAGENET_NORMALIZE["mean"], "std": IMAGENET_NORMALIZE["std"]}
    assert normalize_of(CandidateViews(t, n_views=4)) == normalize_of(t)
    assert normalize_of(SimCLRTransform(input_size=SIZE, normalize=None)) is None
    gen = small_gen(transform=t, eps=0.08)
    assert gen.config["normalize"]["std"] == IMAGENET_NORMALIZE["std"]
    with torch.no_grad():
        x0, x1 = gen(views)  # lightly's batch[0] list
    for x, y in ((views[0], x0), (views[1], x1)):
        realised = ((y * STD + MEAN) - (x * STD + MEAN)).abs().flatten(1).mean(1)
        assert bool((realised <= 0.08 + 1e-6).all()) and float(realised.mean()) > 0.04
    assert torch.allclose(gen.networks[0].last_delta, torch.full((BATCH,), 0.08), atol=1e-5, rtol=0)
    # views in [0, 1] (lightly's normalize=None): no renormalisation
    raw = lightly_batch(SimCLRTransform(input_size=SIZE, normalize=None, gaussian_blur=0.0))
    plain = small_gen(normalize=None)
    a = plain.generate(raw[0]).detach()
    assert torch.allclose((a - raw[0]).abs().flatten(1).mean(1), plain.networks[0].last_realised, atol=1e-6)
    assert a.min() >= 0 and a.max() <= 1


def test_lightly_adapter_errors_name_the_fix(views):
    with pytest.raises(ValueError, match=r"pair of views.*x0, x1 = gen\(x0, x1\)"):
        small_gen()(views[0])
    with pytest.raises(ValueError, match=r"pair of views.*got 1 view"):
        small_gen()([views[0]])
    with pytest.raises(
        ValueError,
        match=r"unknown HardViewGenerator option\(s\): 'normalise' \(did you mean "
        r"'normalize'\?\).*valid keys:.*normalize, transform",
    ):
        HardViewGenerator.from_config({"normalise": None})
    with pytest.raises(ValueError, match=r"normalize=\{'mean'"):
        HardViewGenerator(mean=(0.5,) * 3)
    with pytest.raises(ValueError, match=r"normalize must be a dict with keys 'mean' and 'std'"):
        HardViewGenerator(normalize={"mean": [0.5] * 3})
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\]"):
        HardViewGenerator.from_config({"eps": 2})
    gen = HardViewGenerator.from_config(
        {"eps_start": 0.02, "eps_end": 0.1, "ramp_epochs": 10, "normalize": None, "width": 4, "n_blocks": 1}
    )
    gen.set_epoch(5)
    assert gen.eps == pytest.approx(0.06)


# ----------------------------------------------------------------------------- gradients and state
def test_encoder_gradients_unaffected_and_generator_gets_the_negated_gradient(views):
    model, crit, gen = SimCLR(), NTXentLoss(temperature=0.5), small_gen()
    pos = gen.generator_state_dict()
    x0, x1 = gen(views)
    crit(model(x0), model(x1)).backward()
    with_gen = {n: p.grad.clone() for n, p in model.named_parameters()}
    gen_grads = [p.grad.clone() for p in gen.parameters()]

    ref = SimCLR()  # the same views as plain tensors, the same generator draw without reversal
    gen.load_generator_state_dict(pos)
    plain = [gen.networks[0](v, gen.eps) for v in views]
    loss = crit(ref(plain[0]), ref(plain[1]))
    true_gen = torch.autograd.grad(loss, list(gen.parameters()), retain_graph=True)
    crit(ref(plain[0].detach()), ref(plain[1].detach())).backward()
    for n, p in ref.named_parameters():
        assert torch.equal(p.grad, with_gen[n]), n
    for got, want in zip(gen_grads, true_gen):
        assert torch.equal(got, -want)


def test_generator_step_leaves_the_host_state_bitwise_unchanged(views):
    model, crit, gen = SimCLR(), NTXentLoss(temperature=0.5, memory_bank_size=(16, 16)), small_gen()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # the host trains normally, with a momentum buffer and a memory bank
        x0, x1 = gen(views)
        loss = crit(model(x0), model(x1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        gen.step(loss)
    x0, x1 = gen(views)
    loss = crit(model(x0), model(x1))
    opt.zero_grad()
    loss.backward()
    before = state(model), state(crit), copy.deepcopy(opt.state_dict())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rng = torch.random.get_rng_state()
    gen_before = [p.detach().clone() for p in gen.parameters()]
    gen.step(loss)  # the generator-only step
    assert_bitwise(before[0], state(model), "model parameters/buffers")
    assert_bitwise(before[1], state(crit), "loss state (memory bank)")
    assert str(before[2]) == str(opt.state_dict()) and all(
        torch.equal(a["momentum_buffer"], b["momentum_buffer"])
        for a, b in zip(before[2]["state"].values(), opt.state_dict()["state"].values())
    )
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert torch.equal(rng, torch.random.get_rng_state())
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, gen.parameters()))
    assert all(p.grad is None for p in gen.parameters())  # zeroed after its step


def _fixed_loss(gen, model, crit, views, pos) -> float:
    """Host loss on the fixed batch and fixed generator noise (``pos``)."""
    gen.load_generator_state_dict(pos)
    with torch.no_grad():
        a, b = gen(views)
        return float(crit(model(a), model(b)))


@pytest.mark.parametrize("seed", [0, 1])
def test_generator_update_increases_the_loss_encoder_update_decreases_it(views, seed):
    crit = NTXentLoss(temperature=0.5)
    pos = [{"seed": 10 + seed, "calls": 0}]

    # generator only: the encoder is never stepped
    model, gen = SimCLR(seed), small_gen(lr=5e-3, seed=10 + seed)
    start = _fixed_loss(gen, model, crit, views, pos)
    for _ in range(4):
        gen.load_generator_state_dict(pos)
        a, b = gen(views)
        loss = crit(model(a), model(b))
        loss.backward()
        model.zero_grad()
        gen.step(loss)
    gen_after = _fixed_loss(gen, model, crit, views, pos)

    # encoder only: the generator is never stepped
    model, gen = SimCLR(seed), small_gen(lr=5e-3, seed=10 + seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        gen.load_generator_state_dict(pos)
        a, b = gen(views)
        loss = crit(model(a), model(b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        gen.zero_grad()
    enc_after = _fixed_loss(gen, model, crit, views, pos)
    assert gen_after > start + 0.1, (start, gen_after)  # seeds 0-5: +0.84 to +1.21 after 4 steps
    assert enc_after < start - 0.02, (start, enc_after)  # seeds 0-5: -0.13 to -1.12


# ----------------------------------------------------------------------------- checkpoint / resume
def _train(model, opt, crit, gen, batches, start: int) -> torch.Tensor:
    for i, v in enumerate(batches):
        gen.set_epoch((start + i) / 2)  # the ε ramp moves during the run
        x0, x1 = gen(v)
        loss = crit(model(x0), model(x1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        gen.step(loss)
    return loss.detach()


def test_state_dict_round_trip_resumes_bitwise(views):
    batches = [views, [v.flip(-1) for v in views], [v.flip(-2) for v in views], views]
    crit = NTXentLoss(temperature=0.5)
    kw = dict(eps_start=0.02, eps_end=0.1, ramp_epochs=2, shared=False)

    def fresh(seed=0):
        model = SimCLR()
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), small_gen(seed=seed, **kw)

    model, opt, gen = fresh()
    want = _train(model, opt, crit, gen, batches, 0)

    model, opt, gen = fresh()
    _train(model, opt, crit, gen, batches[:2], 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model, opt, gen2 = fresh(seed=7)  # a different seed: everything must come from the checkpoint
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    gen2.load_state_dict(ckpt["gen"])
    assert gen2.epoch == 0.5 and gen2.steps == 2 and gen2.generator_state_dict() == gen.generator_state_dict()
    got = _train(model, opt, crit, gen2, batches[2:], 2)

    model_ref, opt_ref, gen_ref = fresh()
    _train(model_ref, opt_ref, crit, gen_ref, batches, 0)
    assert torch.equal(got, want)
    assert all(torch.equal(p, q) for p, q in zip(gen2.parameters(), gen_ref.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model_ref.parameters()))
    s2, sr = gen2.optimizer.state_dict()["state"], gen_ref.optimizer.state_dict()["state"]
    assert all(torch.equal(s2[k]["exp_avg_sq"], sr[k]["exp_avg_sq"]) for k in sr)
    with pytest.raises(ValueError, match="shared=False"):
        small_gen(shared=True).load_state_dict(ckpt["gen"])


# ----------------------------------------------------------------------------- generation then selection
def test_generation_then_selection_with_hvsloss_ntxent():
    cand_views = lightly_batch(CandidateViews(SimCLRTransform(input_size=SIZE, gaussian_blur=0.0), n_views=4), seed=3)
    model, gen = SimCLR(), small_gen()
    criterion = HVSLoss(NTXentLoss(temperature=0.5), n_views=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = state(model)
    cands = gen.candidates(cand_views)
    x0, x1 = criterion.select(cands.scoring_views, model, train_views=cands.pair)
    assert_bitwise(before, state(model), "model state during the selection")
    chosen = criterion.last_selection.chosen
    for i, (k, l) in enumerate(chosen.tolist()):  # the hardest generated pair per sample
        assert torch.equal(x0[i], cands.scoring_views[k][i]) and torch.equal(x1[i], cands.scoring_views[l][i])
    assert x0.requires_grad and x1.requires_grad
    loss = criterion(model(x0), model(x1))
    # the selected pair's loss is the highest of the 6 candidate pairs' (per-sample max >= each pair's mean)
    losses = criterion.last_selection.pair_losses
    assert torch.allclose(losses.max(0).values.mean(), losses.gather(0, criterion.last_selection.index[None]).mean())
    opt.zero_grad()
    loss.backward()
    opt.step()
    gen.step(loss)
    assert gen.steps == 1


def test_generation_then_selection_pair_of_generators_simsiam_interleaved():
    from hvs_plugins.adapters.lightly.demo_train import SimSiam

    torch.manual_seed(0)
    model = SimSiam(width=4)
    cand_views = lightly_batch(CandidateViews(SimCLRTransform(input_size=SIZE, gaussian_blur=0.0), n_views=4), seed=4)
    gen = small_gen(shared=False)
    criterion = HVSLoss(NegativeCosineSimilarity(), n_views=4, groups="interleaved")
    cands = gen.candidates(cand_views)
    x0, x1 = criterion.select(cands.scoring_views, model, train_views=cands.pair)
    chosen = criterion.last_selection.chosen
    assert bool(((chosen[:, 0] % 2) != (chosen[:, 1] % 2)).all())  # one view of each generator
    (z0, p0), (z1, p1) = model(x0), model(x1)
    loss = 0.5 * (criterion(z0, p1) + criterion(z1, p0))
    loss.backward()
    assert all(p.grad is not None for p in gen.parameters())  # both generators are trained
    gen.step(loss)


# ----------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~10 s: one interpreter importing torch + lightly, then 2 forked gloo workers
def test_ddp_two_processes_generator_parameters_identical(tmp_path):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, str(REPO / "tests" / "_dist_helpers" / "generator_ddp.py"), str(tmp_path), "3"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"generator_ddp.py did not finish: {proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == 2 and r0["sync"]["steps"] == r1["sync"]["steps"] == 3
    same = lambda a, b: all(torch.equal(p, q) for p, q in zip(a, b))  # noqa: E731
    assert same(r0["sync"]["gen_init"], r1["sync"]["gen_init"])
    assert same(r0["sync"]["gen"], r1["sync"]["gen"])  # averaged gradients: identical generators
    assert not same(r0["sync"]["gen"], r0["sync"]["gen_init"])  # and they did train
    assert same(r0["sync"]["model"], r1["sync"]["model"])  # the host's DDP, as usual
    assert not same(r0["nosync"]["gen"], r1["nosync"]["gen"])  # control: without the all_reduce they drift
