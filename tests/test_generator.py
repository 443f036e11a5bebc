"""Core hard-view generator (hvs_plugins.generator): budget, noise, RNG isolation, gradient reversal,
schedule, configuration errors, candidates, the cost benchmark's smoke run and the figure."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from hvs_plugins import (
    EpsSchedule,
    GeneratedCandidates,
    HardViewGenerator,
    ViewGenerator,
    budget_perturbation,
    hardness_gap,
    reverse_gradient,
)
from hvs_plugins.generator import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def images(b: int = 4, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """Normalised views of smooth images in [0, 1] (some pixels near 0 and 1, so the clamp acts)."""
    g = torch.Generator().manual_seed(seed)
    x01 = torch.nn.functional.interpolate(torch.rand(b, 3, 4, 4, generator=g), size=(h, w), mode="bilinear", align_corners=False)
    return (x01 - MEAN) / STD


def small(**kw) -> HardViewGenerator:
    return HardViewGenerator(**{"width": 4, "n_blocks": 2, "stem_kernel": 3, **kw})


# ----------------------------------------------------------------------------- budget
@pytest.mark.parametrize("eps", [0.01, 0.05, 0.2, 1.0])
def test_budget_is_exact_per_image_and_clamp_only_lowers_it(eps):
    gen = ViewGenerator(width=4, n_blocks=2, stem_kernel=3)
    x = images(6, 16, 20)
    out = gen(x, eps)
    assert out.shape == x.shape
    assert torch.allclose(gen.last_delta, torch.full((6,), eps), atol=1e-5, rtol=0)  # mean |δ| = ε per image
    x01, out01 = x * STD + MEAN, out * STD + MEAN
    realised = (out01 - x01).abs().flatten(1).mean(1)
    assert torch.allclose(realised, gen.last_realised, atol=1e-6)
    assert bool((realised <= eps + 1e-6).all())  # the clamp can only lower the applied change
    assert out01.min() >= -1e-6 and out01.max() <= 1 + 1e-6


def test_budget_function_exact_on_arbitrary_raw_outputs():
    g = torch.Generator().manual_seed(3)
    for eps in (1e-3, 0.05, 0.5, 1.0):
        raw = torch.randn(5, 3, 9, 11, generator=g) * torch.tensor([1e-4, 1e-2, 1.0, 10.0, 100.0]).view(5, 1, 1, 1)
        d = budget_perturbation(raw, eps)
        assert torch.allclose(d.abs().flatten(1).mean(1), torch.full((5,), eps), atol=1e-5, rtol=0)


def test_budget_exact_after_training_steps_and_through_the_trainer():
    gen = small(eps=0.1)
    x = images(4)
    for _ in range(3):
        a, b = gen(x, x)
        (a.pow(2).mean() + b.mean()).backward()
        gen.step()
    gen(x, x)
    assert torch.allclose(gen.networks[0].last_delta, torch.full((4,), 0.1), atol=1e-5, rtol=0)
    s = gen.stats()
    assert abs(s.delta - 0.1) < 1e-5 and s.realised <= 0.1 + 1e-6 and s.eps == 0.1 and s.steps == 3


# ----------------------------------------------------------------------------- noise and RNG
def test_fresh_noise_per_call_reproducible_from_the_seed():
    x = images(2)
    g1, g2, g3 = small(seed=5), small(seed=5), small(seed=6)
    a1, b1 = g1(x, x)
    a2, _ = g1(x, x)
    assert not torch.equal(a1, b1) and not torch.equal(a1, a2)  # new noise per view and per call
    c1, d1 = g2(x, x)
    c2, _ = g2(x, x)
    assert torch.equal(a1, c1) and torch.equal(b1, d1) and torch.equal(a2, c2)  # same seed, same draws
    assert not torch.equal(g3(x, x)[0], a1)


def test_noise_stream_position_is_checkpointed():
    x = images(2)
    gen = small()
    gen(x, x)
    pos = gen.generator_state_dict()
    want = gen(x, x)
    gen(x, x)
    gen.load_generator_state_dict(pos)
    got = gen(x, x)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert pos == [{"seed": 0, "calls": 2}]  # one draw per view
    assert gen.state_dict()["networks"]["0._extra_state"] == {"seed": 0, "calls": 4}


def test_global_rng_bitwise_unchanged():
    x = images(3)
    before = torch.random.get_rng_state().clone()
    cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    gen = small(shared=False)  # construction too: weights come from a forked, seeded RNG
    for _ in range(2):
        a, b = gen(x, x)
        (a.sum() - b.sum()).backward()
        gen.step()
    gen.candidates([x, x, x])
    assert torch.equal(torch.random.get_rng_state(), before)
    if cuda_before is not None:
        assert all(torch.equal(u, v) for u, v in zip(torch.cuda.get_rng_state_all(), cuda_before))


def test_same_weights_whatever_the_global_seed():
    torch.manual_seed(1)
    a = small()
    torch.manual_seed(2)
    b = small()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(small(shared=False).networks[0].parameters(), a.parameters()))
    assert not torch.equal(next(small(shared=False).networks[1].parameters()), next(a.parameters()))


# ----------------------------------------------------------------------------- gradient reversal
def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))


def test_generator_receives_the_negated_gradient_and_steps_uphill():
    x = images(4)
    gen = small(reverse_scale=2.0, lr=1e-2)
    pos = gen.generator_state_dict()
    net = gen.networks[0]
    plain = net(x, gen.eps)  # no reversal: the true gradient of the objective
    grads = torch.autograd.grad(plain.pow(2).mean(), list(net.parameters()))
    gen.load_generator_state_dict(pos)
    a = gen.generate(x)
    assert torch.equal(a, plain)
    a.pow(2).mean().backward()
    for p, g in zip(net.parameters(), grads):
        assert torch.equal(p.grad, -2.0 * g)

    def objective() -> float:
        gen.load_generator_state_dict(pos)
        with torch.no_grad():
            return float(gen.generate(x).pow(2).mean())

    start = objective()
    for _ in range(5):
        gen.load_generator_state_dict(pos)
        gen.generate(x).pow(2).mean().backward()
        gen.step()
    assert objective() > start  # its own (descent) optimiser ascends the objective


def test_no_reversal_node_without_grad_and_disabled_passthrough():
    x = images(2)
    gen = small()
    with torch.no_grad():
        a, _ = gen(x, x)
    assert a.grad_fn is None
    off = small(enabled=False)
    a, b = off(x, x)
    assert a is x and b is x
    with pytest.warns(UserWarning, match="no gradient reached"):
        small().step()


def test_non_finite_gradients_skip_the_step():
    gen = small()
    x = images(2)
    a, _ = gen(x, x)
    a.sum().backward()
    next(iter(gen.parameters())).grad.view(-1)[0] = float("inf")
    before = [p.detach().clone() for p in gen.parameters()]
    gen.step()
    assert gen.skipped == 1 and gen.steps == 0 and gen.stats().skipped == 1
    assert all(torch.equal(p, q) for p, q in zip(before, gen.parameters()))
    assert all(p.grad is None for p in gen.parameters())


def test_budget_in_float32_under_autocast():
    gen = small(eps=0.05)
    x = images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gen.generate(x)
    assert out.dtype == x.dtype
    assert torch.allclose(gen.networks[0].last_delta, torch.full((2,), 0.05), atol=1e-5, rtol=0)


def test_on_the_device(device):
    """The generator follows its input to the device (weights and Adam state), draws its noise from
    its own generator there (reproducible, global CPU/CUDA RNG untouched) and keeps the budget."""
    x = images(3).to(device)
    cpu_rng = torch.random.get_rng_state().clone()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    gen = small(eps=0.1)
    for _ in range(2):
        a, b = gen(x, x)
        (a.pow(2).mean() - b.mean()).backward()
        gen.step()
    assert gen.device.type == device.type and a.device.type == device.type
    assert all(v.device.type == device.type for st in gen.optimizer.state.values() for k, v in st.items() if k != "step")
    assert torch.allclose(gen.networks[0].last_delta.cpu(), torch.full((3,), 0.1), atol=1e-5, rtol=0)
    assert torch.equal(torch.random.get_rng_state(), cpu_rng)
    if cuda_rng is not None:
        assert all(torch.equal(u, v) for u, v in zip(torch.cuda.get_rng_state_all(), cuda_rng))
        again = small(eps=0.1)
        assert torch.equal(again(x, x)[0], small(eps=0.1)(x, x)[0])  # reproducible on the device too


# ----------------------------------------------------------------------------- schedule, stats
def test_schedule_values():
    gen = small(eps_start=0.02, eps_end=0.1, ramp_epochs=4)
    got = []
    for e in (0, 1, 2, 3.5, 4, 10):
        gen.set_epoch(e)
        got.append(gen.eps)
    assert got == pytest.approx([0.02, 0.04, 0.06, 0.09, 0.1, 0.1])
    assert EpsSchedule(0.05, 0.2, 0).value(0) == 0.2
    assert EpsSchedule(0.2, 0.1, 2).value(1) == pytest.approx(0.15)  # a falling schedule is allowed
    assert small(eps=0.07).eps == 0.07 and small(eps=0.07, eps_end=0.2, ramp_epochs=2).eps == 0.07
    x = images(2)
    gen.set_epoch(2)
    gen(x, x)
    assert torch.allclose(gen.networks[0].last_delta, torch.full((2,), 0.06), atol=1e-5)


def test_stats_and_hardness_gap():
    gen = small()
    x = images(2)
    a, b = gen(x, x)
    loss = (a - b).pow(2).mean()
    loss.backward()
    gen.step(loss)
    s = gen.stats(loss_generated=torch.tensor(2.5), loss_input=torch.tensor(2.0))
    assert s.loss == pytest.approx(-float(loss.detach())) and s.hardness_gap == pytest.approx(0.5) and s.steps == 1
    d = s.as_dict()
    assert d["generator/eps"] == 0.05 and "generator/hardness_gap" in d
    assert hardness_gap(3.0, torch.tensor(1.0)) == 2.0


# ----------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"eps": 0.0}, r"eps must be in \(0, 1\].*set eps to e\.g\. 0\.05"),
        ({"eps": -0.1}, r"eps must be in \(0, 1\]"),
        ({"eps": 1.5}, r"eps must be in \(0, 1\]"),
        ({"eps": float("nan")}, r"eps must be in \(0, 1\]"),
        ({"eps_start": 2.0}, r"eps_start must be in \(0, 1\].*set eps_start"),
        ({"eps_end": 0.0}, r"eps_end must be in \(0, 1\]"),
        ({"ramp_epochs": -1}, r"ramp_epochs must be >= 0"),
        ({"eps": None}, r"give the budget: eps=0\.05, or eps_start and eps_end"),
        ({"reverse_scale": 0}, r"reverse_scale must be > 0"),
        ({"stem_kernel": 4}, r"stem_kernel must be an odd int"),
        ({"mean": (0.5, 0.5)}, r"one value per channel \(3\).*Normalize"),
    ],
)
def test_bad_configuration_names_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_from_config_unknown_keys_list_the_valid_ones():
    gen = HardViewGenerator.from_config({"eps": 0.1, "width": 4, "n_blocks": 1, "stem_kernel": 3, "shared": False})
    assert gen.eps == 0.1 and len(gen.networks) == 2
    with pytest.raises(
        ValueError,
        match=r"unknown HardViewGenerator option\(s\): 'epss' \(did you mean 'eps'\?\)"
        r".*valid keys: channels, eps, eps_start",
    ):
        HardViewGenerator.from_config({"epss": 0.1})
    with pytest.raises(TypeError, match="dict"):
        HardViewGenerator.from_config([("eps", 0.1)])


def test_wrong_views_name_the_fix():
    gen = small()
    x = images(2)
    with pytest.raises(ValueError, match=r"pair of views.*got 1 view.*x0, x1 = gen\(x0, x1\).*gen\.generate\(x\)"):
        gen(x)
    with pytest.raises(ValueError, match=r"got 3 view"):
        gen(x, x, x)
    with pytest.raises(ValueError, match=r"add the batch dimension"):
        gen(x[0], x[0])
    with pytest.raises(ValueError, match=r"build it with channels=1"):
        gen(x[:, :1], x[:, :1])
    with pytest.raises(ValueError, match=r"at least 8x8 px"):
        gen.generate(x[..., :4, :4])
    with pytest.raises(TypeError, match="float"):
        gen.generate((x * 100).to(torch.uint8))
    with pytest.raises(ValueError, match=r"N >= 2 candidate views"):
        gen.candidates([x])
    assert [t.shape for t in gen([x, x])] == [x.shape, x.shape]  # lightly's [x0, x1] list is accepted


def test_any_input_size():
    gen = small()
    for h, w in ((8, 8), (13, 29), (32, 24)):
        a = gen.generate(images(2, h, w))
        assert a.shape == (2, 3, h, w)


# ----------------------------------------------------------------------------- candidates
def test_candidates_pair_gathers_with_gradients_to_the_generator():
    gen = small(shared=False)
    views = [images(3, seed=s) for s in range(4)]
    pos = gen.generator_state_dict()
    cands = gen.candidates(views)
    assert isinstance(cands, GeneratedCandidates) and len(cands) == 4
    assert all(not v.requires_grad for v in cands.scoring_views) and all(v.requires_grad for v in cands.views)
    gen.load_generator_state_dict(pos)  # candidate k through generator k % 2, in order
    for k, v in enumerate(views):
        assert torch.equal(gen.generate(v, k % 2).detach(), cands.scoring_views[k])
    chosen = torch.tensor([[0, 1], [2, 3], [3, 0]])
    a, b = cands.pair(chosen)
    for i, (k, l) in enumerate(chosen.tolist()):
        assert torch.equal(a[i], cands.views[k][i]) and torch.equal(b[i], cands.views[l][i])
    (a.sum() + b.sum()).backward()
    assert all(p.grad is not None for p in gen.parameters())
    with pytest.raises(ValueError, match=r"chosen must be \[M=3, 2\]"):
        cands.pair(torch.zeros(2, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- benchmark smoke, figure
def test_generator_cost_benchmark_smoke(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("hvs_generator_cost", ROOT / "benchmarks" / "generator_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--steps", "2", "--warmup", "0", "--batch", "4", "--size", "16", "--out", str(tmp_path / "cost.json")])
    for arm in out["arms"].values():
        assert arm["ratio"] > 0 and math.isfinite(arm["ratio"])
    assert "cost ratio" in capsys.readouterr().out and (tmp_path / "cost.json").exists()
    out = mod.main(
        ["--host", "resnet18", "--steps", "1", "--warmup", "0", "--batch", "2", "--size", "32", "--out", str(tmp_path / "r.json")]
    )
    assert all(arm["ratio"] > 0 for arm in out["arms"].values()) and "torchvision resnet18" in capsys.readouterr().out


def test_plot_generated_views_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from hvs_plugins.generator_plot import plot_generated_views

    gen = small(eps=0.2)
    x = images(3)
    with torch.no_grad():
        g = gen.generate(x)
    path = plot_generated_views(x * STD + MEAN, g * STD + MEAN, tmp_path / "fig" / "views.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\[M, 3, H, W\]"):
        plot_generated_views(x, g[:2], tmp_path / "bad.png")
