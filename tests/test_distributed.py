"""HVS under each host's own distributed engine: 2 CPU processes, gloo, tiny models, a few steps.

- lightly through pytorch_lightning's DDP strategy (SimCLR with NTXentLoss(gather_distributed=True);
  DINO with the host-synchronised center),
- MMSelfSup through mmengine's ``launcher='pytorch'`` under torchrun (SimCLR, MoCo v3: both gather
  across ranks),
- solo-learn through Lightning DDP (SimCLR, MoCo v3: both gather; runs where solo-learn is importable:
  CI installs it, elsewhere `HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3 ./scripts/test`).

CPU notes: mmengine 0.10's pytorch launcher calls torch.cuda.set_device unconditionally, so the
MMSelfSup helper initialises the gloo group itself first (the Runner then runs distributed as usual)
and builds MMDistributedDataParallel without device_ids; necks use BN1d instead of SyncBN.

Every rank saves what it received and selected; this process then checks that the ranks end with
identical parameters and recomputes every rank's selection in a single process on the same shard
(with the other rank's embeddings as negatives where the host gathers them), also against the
host's own loss on the global batch.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "_dist_helpers"
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_helper(cmd: list[str], cwd: Path, timeout: int = TIMEOUT) -> str:
    """Run a 2-process helper in its own process group (killed as a group on timeout)."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        PYTHONWARNINGS="ignore",
    )
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        env.pop(k, None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[:3]} did not finish in {timeout}s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def load_ranks(out_dir: Path, world: int = 2) -> list[dict]:
    files = [out_dir / f"rank{r}.pt" for r in range(world)]
    missing = [str(f) for f in files if not f.exists()]
    assert not missing, f"ranks wrote no result: {missing}"
    return [torch.load(f, map_location="cpu", weights_only=False) for f in files]


def assert_same(a: dict, b: dict, keys=None, what: str = "state") -> None:
    keys = sorted(a) if keys is None else keys
    diff = [k for k in keys if not torch.equal(a[k], b[k])]
    assert not diff, f"ranks disagree on {what}: {diff[:8]}"


def has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


# =================================================================== lightly (Lightning DDP)
needs_lightly = pytest.mark.skipif(
    not (has("lightly") and has("pytorch_lightning")),
    reason="lightly / pytorch_lightning not installed (pip install 'hvs-plugins[lightly]')",
)


def _lightly_helper():
    spec = importlib.util.spec_from_file_location("_hvs_lightly_ddp", HELPERS / "lightly_ddp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lightly_runs(tmp_path_factory):
    """One 2-process run per method, made on first use."""
    cache: dict = {}

    def get(method: str) -> list[dict]:
        if method not in cache:
            out = tmp_path_factory.mktemp(f"lightly_{method}")
            run_helper([sys.executable, str(HELPERS / "lightly_ddp.py"), str(out), method, "3"], cwd=out)
            cache[method] = load_ranks(out)
        return cache[method]

    return get


def _param_names(module) -> list[str]:
    return [n for n, p in module.named_parameters()]


@needs_lightly
def test_lightly_simclr_ddp_ranks_in_sync_and_gathered_negatives(lightly_runs):
    from lightly.loss import NTXentLoss

    from hvs_plugins import make_pairs, ntxent_pair_losses

    helper = _lightly_helper()
    r0, r1 = lightly_runs("simclr")
    assert r0["world"] == 2 and len(r0["records"]) == len(r1["records"]) == 3
    net = helper.tiny_net()
    params = ["net." + n for n in _param_names(net)]
    assert_same(r0["final"], r1["final"], params, "parameters after 3 DDP steps")
    pairs = make_pairs(helper.N_VIEWS)
    ref_loss = NTXentLoss(temperature=0.5)
    for s0, s1 in zip(r0["records"], r1["records"]):
        assert_same(s0["pre"], s1["pre"], params, f"parameters before step {s0['step']}")
        assert not torch.equal(s0["idx"], s1["idx"])  # different shards
        # single process, same shards: per-view forwards as the selection does (train-mode BN per view)
        zs = []
        for s in (s0, s1):
            net.load_state_dict({k[4:]: v for k, v in s["pre"].items() if k.startswith("net.")})
            net.train()
            with torch.no_grad():
                zs.append(torch.stack([net(v) for v in s["views"]]))
        z_all = torch.cat(zs, dim=1)
        m = zs[0].shape[1]
        for r, s in enumerate((s0, s1)):
            expected = ntxent_pair_losses(zs[r], pairs, 0.5, all_embeddings=z_all, offset=r * m)
            torch.testing.assert_close(s["pair_losses"], expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(s["index"], expected.argmax(0)), f"rank {r} selected differently"
            local = ntxent_pair_losses(zs[r], pairs, 0.5)
            assert not torch.allclose(local, s["pair_losses"], atol=1e-4), "selection ignored the other rank"
        # the host's loss (lightly, on the global batch of pair p) = mean of both ranks' pair losses:
        # selection used exactly the negatives NTXentLoss(gather_distributed=True) uses in the step
        for p, (k, l) in enumerate(pairs.tolist()):
            host = float(ref_loss(z_all[k], z_all[l]))
            ours = float(torch.cat([s0["pair_losses"][p], s1["pair_losses"][p]]).mean())
            assert abs(host - ours) < 1e-5, (p, host, ours)


@needs_lightly
def test_lightly_dino_ddp_center_synchronised_and_selection_matches(lightly_runs):
    from hvs_plugins import CombinationSpace, dino_cross_entropy

    helper = _lightly_helper()
    r0, r1 = lightly_runs("dino")
    model = helper.Module("dino")
    params = [n for n, _ in model.named_parameters()]
    assert_same(r0["final"], r1["final"], params, "student/teacher parameters after 3 DDP steps")
    assert torch.equal(r0["final"]["criterion.center"], r1["final"]["criterion.center"])
    assert float(r0["final"]["criterion.center"].abs().sum()) > 0  # the host updated it
    assert_same(r0["selector"], r1["selector"], ["generator"], "selector generator state")
    g = torch.Generator().manual_seed(0)  # HVSLoss(seed=0): the capped sample, replayed in one process
    for s0, s1 in zip(r0["records"], r1["records"]):
        assert torch.equal(s0["center"], s1["center"]), "ranks select with different DINO centers"
        for s in (s0, s1):
            assert torch.equal(s["center"], s["pre"]["criterion.center"])  # read only
        combos = None
        for r, s in enumerate((s0, s1)):
            model.load_state_dict(s["pre"])
            model.train()
            views = s["views"]
            with torch.no_grad():
                t = torch.stack([model.teacher(v) for v in views[:4]])
                st = torch.stack([model.student(v) for v in views])
            ce = dino_cross_entropy(t, st, s["center"], 0.04, 0.1)
            space = CombinationSpace(4, helper.N_LOCAL_CAND, helper.N_LOCAL_CAND // 2)
            if combos is None:
                state = g.get_state()
                combos = space.sample(8, g)
                g.set_state(state)
                space.search(ce, 8, g)  # advance as the selector did
            expected = space.evaluate(ce, combos)
            torch.testing.assert_close(s["candidate_losses"], expected, rtol=1e-4, atol=1e-5)
            best = expected.argmax(0)
            assert torch.equal(s["globals_"], combos.globals_[best]), f"rank {r}"
            assert torch.equal(s["locals_"], combos.locals_[best]), f"rank {r}"


# =================================================================== MMSelfSup (mmengine pytorch launcher)
needs_mmselfsup = pytest.mark.skipif(not has("mmselfsup"), reason="MMSelfSup not installed (pip install 'hvs-plugins[mmselfsup]')")


def _mm_helper():
    spec = importlib.util.spec_from_file_location("_hvs_mmselfsup_dist", HELPERS / "mmselfsup_dist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mm_dist_run(tmp_path, algo):
    """torchrun, 2 processes, mmengine Runner(launcher='pytorch'); returns both ranks' records, the
    algorithm rebuilt in this process and its parameter names (checked equal across ranks)."""
    out = tmp_path / "run"
    out.mkdir()
    run_helper(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(HELPERS / "mmselfsup_dist.py"),
            str(out),
            algo,
        ],
        cwd=tmp_path,
    )
    r0, r1 = load_ranks(out)
    assert r0["world"] == 2 and len(r0["records"]) == len(r1["records"]) == 3

    torch.set_num_threads(1)
    helper = _mm_helper()
    from mmengine.registry import init_default_scope

    from hvs_plugins.adapters.mmselfsup.hook import HardViewSelectionHook  # noqa: F401  (registry fix)
    from mmselfsup.registry import MODELS

    init_default_scope("mmselfsup")
    model = MODELS.build(helper.model_cfg(algo))
    params = [n for n, _ in model.named_parameters()]
    assert_same(r0["final"], r1["final"], params, "parameters after 3 iterations")
    for s0, s1 in zip(r0["records"], r1["records"]):
        assert_same(s0["pre"], s1["pre"], params, f"parameters before iteration {s0['iter']}")
        for r, s in enumerate((s0, s1)):
            assert torch.equal(s["index"], s["pair_losses"].argmax(0)), f"rank {r}"
            chosen = helper_pairs(helper)[s["index"]]
            for i in range(chosen.shape[0]):  # the algorithm trained on the selected raw views
                assert torch.equal(s["trained"][0][i], s["inputs"][chosen[i, 0]][i])
                assert torch.equal(s["trained"][1][i], s["inputs"][chosen[i, 1]][i])
    return r0, r1, model, helper


def helper_pairs(helper):
    from hvs_plugins import make_pairs

    return make_pairs(helper.N_VIEWS)


def _preprocessed(model, inputs):
    pre = model.data_preprocessor({"inputs": inputs, "data_samples": None}, True)
    return pre["inputs"] if isinstance(pre, dict) else pre[0]


@needs_mmselfsup
def test_mmselfsup_simclr_torchrun_ranks_in_sync_and_gathered_negatives(tmp_path):
    from hvs_plugins import ntxent_pair_losses

    r0, r1, model, helper = _mm_dist_run(tmp_path, "SimCLR")
    pairs = helper_pairs(helper)
    temperature = float(model.head.temperature)
    for s0, s1 in zip(r0["records"], r1["records"]):
        per_rank = []  # [P] of (z pair [2, m, D], interleaved z [2m, D])
        for s in (s0, s1):
            model.load_state_dict(s["pre"])
            model.train()
            with torch.no_grad():
                views = _preprocessed(model, s["inputs"])
                zs = []
                for k, l in pairs.tolist():
                    m = views[k].shape[0]
                    x = torch.stack([views[k], views[l]], 1).reshape(2 * m, *views[k].shape[1:])
                    z = model.neck(model.backbone(x))[0]
                    z = z / (torch.norm(z, p=2, dim=1, keepdim=True) + 1e-10)
                    zs.append((torch.stack([z[0::2], z[1::2]]), z))
            per_rank.append(zs)
        one = torch.tensor([[0, 1]])
        for p in range(pairs.shape[0]):
            z_all = torch.cat([per_rank[0][p][0], per_rank[1][p][0]], dim=1)
            m = per_rank[0][p][0].shape[1]
            for r, s in enumerate((s0, s1)):
                expected = ntxent_pair_losses(per_rank[r][p][0], one, temperature, all_embeddings=z_all, offset=r * m)[0]
                torch.testing.assert_close(s["pair_losses"][p], expected, rtol=1e-5, atol=1e-5)
            # MMSelfSup's own SimCLR loss on the global (gathered) batch of pair p
            zg = torch.cat([per_rank[0][p][1], per_rank[1][p][1]])
            n = zg.shape[0] // 2
            sim = zg @ zg.t()
            mask, pos_idx, neg_mask = model._create_buffer(n, sim.device)
            sim = torch.masked_select(sim, mask == 1).reshape(sim.size(0), -1)
            with torch.no_grad():
                host = float(model.head(sim[pos_idx].unsqueeze(1), torch.masked_select(sim, neg_mask == 1).reshape(sim.size(0), -1)))
            ours = float(torch.cat([s0["pair_losses"][p], s1["pair_losses"][p]]).mean())
            assert abs(host - ours) < 1e-5, (p, host, ours)


@needs_mmselfsup
def test_mmselfsup_mocov3_torchrun_gathered_keys(tmp_path):
    """MoCo v3's head gathers the momentum keys of all ranks: selection scores with the same keys."""
    import torch.nn.functional as F

    r0, r1, model, helper = _mm_dist_run(tmp_path, "MoCoV3")
    pairs = helper_pairs(helper)
    t, w = float(model.head.temperature), 2 * 0.2
    for s0, s1 in zip(r0["records"], r1["records"]):
        preds, keys = [], []
        for s in (s0, s1):
            model.load_state_dict(s["pre"])
            model.train()
            with torch.no_grad():
                views = _preprocessed(model, s["inputs"])
                preds.append([F.normalize(model.head.predictor([model.neck(model.backbone(v))[0]])[0], dim=1) for v in views])
                keys.append([F.normalize(model.momentum_encoder(v)[0], dim=1) for v in views])
        m = preds[0][0].shape[0]
        for r, s in enumerate((s0, s1)):
            labels = torch.arange(m) + r * m
            for p, (a, b) in enumerate(pairs.tolist()):
                # MoCoV3Head.loss(q_a, k_b) + loss(q_b, k_a) with keys gathered over ranks, per sample
                ce_ab = F.cross_entropy(preds[r][a] @ torch.cat([keys[0][b], keys[1][b]]).t() / t, labels, reduction="none")
                ce_ba = F.cross_entropy(preds[r][b] @ torch.cat([keys[0][a], keys[1][a]]).t() / t, labels, reduction="none")
                torch.testing.assert_close(s["pair_losses"][p], w * (ce_ab + ce_ba), rtol=1e-5, atol=1e-5)


# =================================================================== solo-learn (Lightning DDP)
needs_solo = pytest.mark.skipif(
    not has("solo"),
    reason="solo-learn is not installed (no usable registry build); to run these: "
    "HVS_SOLO_LEARN_SRC=git+https://github.com/vturrisi/solo-learn@9187ea3 ./scripts/test "
    "(or HVS_SOLO_LEARN_SRC=<a solo-learn folder or .tar.gz>)",
)


def _solo_helper():
    spec = importlib.util.spec_from_file_location("_hvs_solo_ddp", HELPERS / "solo_ddp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _solo_dist_run(tmp_path, method):
    run_helper([sys.executable, str(HELPERS / "solo_ddp.py"), str(tmp_path), method, "3"], cwd=tmp_path)
    r0, r1 = load_ranks(tmp_path)
    assert r0["world"] == 2 and len(r0["records"]) == len(r1["records"]) == 3
    torch.set_num_threads(1)
    helper = _solo_helper()
    model = helper.build_model(method, devices="1")
    params = [n for n, _ in model.named_parameters()]
    assert_same(r0["final"], r1["final"], params, "parameters after 3 DDP steps")
    for s0, s1 in zip(r0["records"], r1["records"]):
        assert_same(s0["pre"], s1["pre"], params, f"parameters before step {s0['step']}")
        idx_all = torch.cat([s0["idx"], s1["idx"]])
        assert len(set(idx_all.tolist())) == idx_all.numel()  # disjoint shards
    return r0, r1, model, helper


@needs_solo
def test_solo_learn_simclr_ddp_ranks_in_sync_and_gathered_negatives(tmp_path):
    from solo.losses.simclr import simclr_loss_func

    from hvs_plugins import make_pairs, ntxent_pair_losses, preserve_state

    r0, r1, model, helper = _solo_dist_run(tmp_path, "simclr")
    pairs = make_pairs(helper.N_VIEWS)
    temperature = float(model.temperature)
    for s0, s1 in zip(r0["records"], r1["records"]):
        zs = []
        for s in (s0, s1):
            model.load_state_dict(s["pre"])
            model.train()
            with preserve_state([model]), torch.no_grad():
                zs.append(torch.stack([model(v)["z"] for v in s["views"]]))
        z_all = torch.cat(zs, dim=1)
        idx_all = torch.cat([s0["idx"], s1["idx"]])
        m = zs[0].shape[1]
        for r, s in enumerate((s0, s1)):
            expected = ntxent_pair_losses(zs[r], pairs, temperature, all_embeddings=z_all, offset=r * m)
            torch.testing.assert_close(s["pair_losses"], expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(s["index"], expected.argmax(0)), f"rank {r} selected differently"
        for p, (k, l) in enumerate(pairs.tolist()):  # solo-learn's own loss on the global batch
            host = float(simclr_loss_func(torch.cat([z_all[k], z_all[l]]), indexes=idx_all.repeat(2), temperature=temperature))
            ours = float(torch.cat([s0["pair_losses"][p], s1["pair_losses"][p]]).mean())
            assert abs(host - ours) < 1e-5, (p, host, ours)


@needs_solo
def test_solo_learn_mocov3_ddp_gathered_keys(tmp_path):
    """solo-learn's MoCo v3 loss gathers the momentum keys of all ranks; so do the HVS scores."""
    from solo.losses.mocov3 import mocov3_loss_func

    from hvs_plugins import make_pairs, preserve_state
    from hvs_plugins.adapters.solo_learn.scoring import mocov3_pair_losses

    r0, r1, model, helper = _solo_dist_run(tmp_path, "mocov3")
    pairs = make_pairs(helper.N_VIEWS)
    t = float(model.temperature)
    for s0, s1 in zip(r0["records"], r1["records"]):
        qs, ks = [], []
        for s in (s0, s1):
            model.load_state_dict(s["pre"])
            model.train()
            with preserve_state([model]), torch.no_grad():
                qs.append(torch.stack([model(v)["q"] for v in s["views"]]))
                ks.append(torch.stack([model.momentum_forward(v)["k"] for v in s["views"]]))
        q_all, k_all = torch.cat(qs, 1), torch.cat(ks, 1)
        m = qs[0].shape[1]
        for r, s in enumerate((s0, s1)):
            expected = mocov3_pair_losses(qs[r], ks[r], pairs, t, k_all, r * m)
            torch.testing.assert_close(s["pair_losses"], expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(s["index"], expected.argmax(0)), f"rank {r}"
        for p, (a, b) in enumerate(pairs.tolist()):  # solo-learn's own loss on the global batch
            host = float(mocov3_loss_func(q_all[a], k_all[b], t) + mocov3_loss_func(q_all[b], k_all[a], t))
            ours = float(torch.cat([s0["pair_losses"][p], s1["pair_losses"][p]]).mean())
            assert abs(host - ours) < 1e-5, (p, host, ours)
