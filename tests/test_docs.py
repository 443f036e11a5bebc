"""The documentation: the Sphinx site builds without a warning, and every example in it runs.

- ``test_docs_build``: ``sphinx-build -W --keep-going -b html docs <tmp>`` (offline), then the
  page list. Skipped only where Sphinx / myst-parser are not installed (``pip install ".[docs]"``).
- ``test_python_examples``: every ```python block of README.md and docs/*.md runs, the blocks of a
  page in order in one namespace (like a notebook), on the CPU, in a temporary directory. Blocks
  that are MMSelfSup / MMPretrain configs (they assign ``custom_hooks``, ``custom_imports`` or
  ``_base_``) are executed as configs instead: their ``custom_imports`` must import, their
  ``HardViewSelectionHook`` entries must build with the hook's own validation, and an
  ``mmselfsup::`` / ``mmpretrain::`` base config must exist in that package.
- ``test_yaml_examples``: every ```yaml block loads with ``yaml.safe_load``; an ``hvs:`` block (the
  solo-learn adapter's) must pass the adapter's own validator, ``parse_hvs_config``.
- ``test_fences``: every fenced block names its language, from a short list: code that cannot run
  in a test (a shell command, a GPU) is ``bash`` or ``text``, never ``python``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# the site's pages (docs/<name>.md -> <name>.html); a page added or removed changes this list
EXPECTED_PAGES = [
    "api-adapters",
    "api-core",
    "benchmarks",
    "changelog",
    "generator",
    "getting-started",
    "index",
    "lightly",
    "mmselfsup",
    "solo-learn",
    "which-option",
]
# languages a fenced block may name: MyST directives ({toctree}, {include}, ...) are fine too
LANGUAGES = {"python", "yaml", "bash", "text", "diff"}
# a python block is an mmengine config (not run as code) when it assigns one of these
CONFIG_NAMES = {"_base_", "custom_hooks", "custom_imports"}
# a block that needs a host which is not installed skips its page (the host's extra brings it)
HOSTS = {"lightly", "mmengine", "mmselfsup", "mmpretrain", "mmcv", "solo", "matplotlib", "pytorch_lightning", "torchvision"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$", re.M | re.S)


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """``(language, code, line)`` of every fenced block of a Markdown page, in order."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        info = m.group("info").strip()
        lang = info.split()[0] if info else ""
        indent = len(m.group("indent"))
        body = "".join(line[indent:] if line[:indent].strip() == "" else line for line in m.group("body").splitlines(keepends=True))
        out.append((lang, body, text.count("\n", 0, m.start()) + 1))
    return out


def python_blocks(page: Path) -> list[tuple[str, int]]:
    return [(code, line) for lang, code, line in blocks(page) if lang == "python"]


def is_config(code: str) -> bool:
    names = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return bool(names & CONFIG_NAMES)


def test_pages_have_examples():
    """The pages the tests below read exist and hold examples (a renamed page must not silence them)."""
    names = [p.stem for p in PAGES]
    assert "README" in names and {"lightly", "mmselfsup", "solo-learn"} <= set(names)
    counted = {p.stem: len(python_blocks(p)) for p in PAGES}
    assert counted["lightly"] >= 10 and counted["README"] >= 2, counted


def test_demo_output_is_one_run():
    """The demo's output block (pasted from a real run) appears on the getting-started page, and
    wherever else it is shown it is the same text."""

    def outputs(page: Path) -> list[str]:
        return [code for lang, code, _ in blocks(page) if lang == "text" and code.startswith("HVS demo:")]

    shown = {p.name: outputs(p) for p in PAGES if outputs(p)}
    assert shown.get("getting-started.md"), "the demo's output block is missing from docs/getting-started.md"
    assert len({code for codes in shown.values() for code in codes}) == 1, f"different demo outputs in {sorted(shown)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_fences(page):
    bad = [(line, lang or "(none)") for lang, _, line in blocks(page) if lang not in LANGUAGES and not lang.startswith("{")]
    assert not bad, f"{page.name}: fenced blocks without an allowed language (line, language): {bad}; use one of {sorted(LANGUAGES)}"


def _multiview_views(cfg) -> list:
    """``num_views`` of every MultiView in the config's train pipeline."""
    pipeline = cfg.get("train_dataloader", {}).get("dataset", {}).get("pipeline", [])
    return [t["num_views"] for t in pipeline if t.get("type") == "MultiView"]


def _check_config(code: str, where: str, tmp_path: Path) -> None:
    ns: dict = {}
    exec(compile(code, where, "exec"), ns)
    for name in (ns.get("custom_imports") or {}).get("imports", []):
        importlib.import_module(name)
    from hvs_plugins.adapters.mmselfsup import HardViewSelectionHook

    hooks = [h for h in ns.get("custom_hooks") or [] if h.get("type") == "HardViewSelectionHook"]
    for h in hooks:
        HardViewSelectionHook(**{k: v for k, v in h.items() if k != "type"})  # the hook's own validation
    if "custom_hooks" in ns:
        assert hooks, f"{where}: custom_hooks without a HardViewSelectionHook"
    base = ns.get("_base_")
    bases = [base] if isinstance(base, str) else list(base or [])
    for b in bases:
        if "::" in b:
            package, rel = b.split("::", 1)
            spec = importlib.util.find_spec(package)
            assert spec is not None, f"{where}: _base_ {b!r}: {package} is not installed"
            cfg = Path(spec.origin).parent / ".mim" / "configs" / rel
            assert cfg.is_file(), f"{where}: _base_ {b!r}: no {cfg}"
    if bases and importlib.util.find_spec("pkg_resources") is not None:  # mmengine's scope lookup needs it
        from mmengine.config import Config

        path = tmp_path / "docs_config.py"
        path.write_text(code, encoding="utf-8")
        cfg = Config.fromfile(str(path))  # the merged config, as a run would load it
        views = _multiview_views(cfg)
        for h in cfg.get("custom_hooks", []):
            if h.get("type") == "HardViewSelectionHook" and views:
                n = views[0] if isinstance(views[0], int) else sum(views[0])
                assert n == h.get("n_views", 4), f"{where}: MultiView makes {views[0]} views, the hook wants {h}"


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples(page, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)  # figures and checkpoints the examples write land here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ns: dict = {"__name__": "__docs_example__"}
    ran, configs = 0, 0
    try:
        for code, line in python_blocks(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            try:
                if is_config(code):
                    _check_config(code, where, tmp_path)
                    configs += 1
                else:
                    exec(compile(code, where, "exec"), ns)
                    ran += 1
            except ModuleNotFoundError as err:
                if (err.name or "").split(".")[0] in HOSTS:
                    pytest.skip(f"{where} needs {err.name}, not installed here (its extra brings it)")
                raise
    finally:
        torch.set_num_threads(threads)
    print(f"{page.name}: {ran} python blocks ran, {configs} configs checked")


@pytest.mark.parametrize("page", [p for p in PAGES if any(lang == "yaml" for lang, _, _ in blocks(p))], ids=lambda p: p.name)
def test_yaml_examples(page):
    yaml = pytest.importorskip("yaml")
    from hvs_plugins.adapters.solo_learn import parse_hvs_config

    for lang, code, line in blocks(page):
        if lang != "yaml":
            continue
        doc = yaml.safe_load(code)
        assert isinstance(doc, dict), f"{page.name}:{line}: a yaml block should be a mapping"
        if "hvs" in doc:
            parse_hvs_config(doc["hvs"])


def test_docs_build(tmp_path):
    pytest.importorskip("sphinx", reason='the docs need Sphinx: pip install ".[docs]"')
    pytest.importorskip("myst_parser", reason='the docs need myst-parser: pip install ".[docs]"')
    out = tmp_path / "html"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out), "-d", str(tmp_path / "doctrees")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    took = time.monotonic() - start
    assert proc.returncode == 0, f"sphinx-build failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    pages = sorted(p.stem for p in out.glob("*.html") if p.stem not in {"genindex", "search", "py-modindex"})
    assert pages == EXPECTED_PAGES
    assert sorted(p.stem for p in DOCS.glob("*.md")) == EXPECTED_PAGES  # every page source is built
    api = (out / "api-core.html").read_text(encoding="utf-8")
    for module in (
        "crops",
        "geometric",
        "guard",
        "per_sample",
        "unscorable",
        "losses",
        "contrastive",
        "multicrop",
        "pairs",
        "runner",
        "schedule",
        "selection",
        "stats",
        "swav",
        "ibot",
        "layer_scoring",
        "plotting",
        "generator",
    ):
        assert f'id="module-hvs_plugins.{module}"' in api, f"hvs_plugins.{module} missing from the API page"
    assert "HVSLoss" in (out / "api-adapters.html").read_text(encoding="utf-8")
    figures = {p.name for p in (out / "_images").glob("*.png")}
    assert {"effect_grid.png", "effect_training.png", "iou_histogram.png"} <= figures, figures
    print(f"sphinx-build: {len(pages)} pages in {took:.0f} s")
