"""famix report: one self-contained HTML page of a real tiny training run and of a real famix eval JSON."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from famix.cli import main
from famix.config import load_config
from famix.stages import mine, report, train

VAL = ["synthetic:day:4:99:size=64", "synthetic:night:4:98:size=64"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-step run validated every 2 steps on two datasets, and a famix eval JSON of its best.pt."""
    out = tmp_path_factory.mktemp("report") / "run"
    bank = out.parent / "bank.safetensors"  # outside the run: the page names it, never its absolute path
    mine_cfg = [
        "data.train=synthetic:day:16:size=64",
        f"style.bank={bank}",
        "mine.max_images=8",
        "mine.steps=2",
    ]
    mine.run(load_config("tiny", mine_cfg), progress=False, say=lambda _: None)
    cfg = load_config(
        "tiny",
        [
            "data.train=synthetic:day:16:size=64",
            f"data.val=[{','.join(VAL)}]",
            "style.mix=none",
            f"style.bank={bank}",
            "train.iterations=4",
            "train.val_interval=2",
            "train.log_interval=2",
            f"train.out={out}",
        ],
    )
    train.run(cfg, say=lambda _: None)
    main(
        [
            "eval",
            str(out / "best.pt"),
            "--data",
            *VAL,
            "--json",
            str(out / "best.eval.json"),
            "--workers",
            "0",
        ]
    )
    return out


class Page(HTMLParser):
    """Every tag's attributes, every table (class -> rows of cell texts) and the visible text."""

    def __init__(self):
        super().__init__()
        self.attrs: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._table = self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs.append((tag, a))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._row:
            self._row[-1] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def assert_self_contained(path: Path, tmp: Path) -> Page:
    """Every picture inline and decodable; no address, no file reference, no absolute path of this machine."""
    text = path.read_text(encoding="utf-8")
    page = parse(path)
    images = [a for tag, a in page.attrs if tag == "img"]
    assert images
    for a in images:
        assert a["src"].startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1]))).verify()
    for tag, a in page.attrs:
        assert not ({"href", "action"} & set(a)), (tag, a)
        assert tag in ("img",) or "src" not in a, (tag, a)
    for needle in ("http://", "https://", "file:", "<script", str(tmp), str(tmp.resolve()), str(Path.home())):
        assert needle not in text, needle
    return page


def test_report_of_a_training_run(tiny_run):
    out = report.run(tiny_run, say=lambda _: None)
    assert out == tiny_run / "report.html"
    page = assert_self_contained(out, tiny_run.parent)
    text = "".join(page.text)
    assert {"record", "config", "metrics", "per-class", "settings"} <= set(page.tables)
    record = dict(page.tables["record"][1:])
    assert record["kind"] == "train" and record["step"] == "4" and record["train.iterations"] == "4"
    assert dict(page.tables["config"][1:])["train.out"] == "."  # the run folder, relative to itself
    alts = [a.get("alt", "") for tag, a in page.attrs if tag == "img"]
    assert "Validation mIoU per dataset over steps" in alts
    assert sum(alt.startswith("Confusion matrix") for alt in alts) >= 2  # per dataset, per results file
    assert "Not shown" in text and "reliability" in text
    assert "Style bank: styles per class" in alts and "Style bank: PCA of the mined styles" in alts
    assert "bank.safetensors" in text


def _per_dataset(rows: list[list[str]]) -> list[list[list[str]]]:
    """The rows of the tables of one class, one list per table (each starts with its header row)."""
    tables: list[list[list[str]]] = []
    for row in rows:
        if row and row[0] == rows[0][0]:
            tables.append([])
        else:
            tables[-1].append(row)
    return tables


def test_report_shows_the_worst_images_and_reliability_of_a_model_pass(tiny_run, tmp_path):
    passed = report.model_pass(tiny_run / "best.pt", VAL, k=2, max_images=3)
    out = report.run(tiny_run, out=tmp_path / "r.html", say=lambda _: None, k=2, max_images=3)
    page = assert_self_contained(out, tiny_run.parent)
    alts = [a.get("alt", "") for tag, a in page.attrs if tag == "img"]
    worst_tables = _per_dataset(page.tables["worst"])
    reliability_tables = _per_dataset(page.tables["reliability"])
    assert len(worst_tables) == len(reliability_tables) == len(VAL)  # run and its eval JSON: one pass
    for spec, rows, bins in zip(VAL, worst_tables, reliability_tables, strict=True):
        d = passed["datasets"][spec]
        assert d["indices"] == [0, 2, 3] and len(d["miou"]) == 3  # 3 of 4 images, evenly spread
        shown = [float(r[2]) for r in rows]
        assert len(rows) == 2 and shown == sorted(shown)
        assert [r[2] for r in rows] == [f"{m:.2f}" for m in sorted(d["miou"])[:2]]
        assert [int(r[1]) for r in rows] == [w["index"] for w in d["worst"]]
        rel = d["reliability"]
        assert [int(r[3]) for r in bins] == rel["count"] and sum(rel["count"]) > 0
        assert 0 <= rel["ece"] <= 1
        assert sum(a.startswith("Worst image") and report.dataset_name(spec) in a for a in alts) == 2
        assert f"Reliability diagram: {report.dataset_name(spec)}" in alts
    text = "".join(page.text)
    assert "Not shown" in text and "at most 3 images per dataset" in text


def test_report_says_why_it_shows_no_model_pass(tiny_run, tmp_path):
    data = json.loads((tiny_run / "best.eval.json").read_text())
    src = tmp_path / "best.eval.json"
    src.write_text(json.dumps({**data, "checkpoint": "best.pt"}))  # not beside it, nor in the working folder
    page = assert_self_contained(report.run(src, say=lambda _: None), tmp_path)
    assert "worst" not in page.tables and "no checkpoint found" in "".join(page.text)
    shutil.copy(tiny_run / "best.pt", tmp_path / "best.pt")
    page = parse(report.run(src, say=lambda _: None, model=False))
    assert "worst" not in page.tables and "model pass was skipped" in "".join(page.text)
    page = parse(report.run(src, say=lambda _: None, max_images=1, k=1))  # found beside the JSON now
    assert len(_per_dataset(page.tables["worst"])) == len(VAL)


def slow_reliability(conf: list[float], correct: list[bool], bins: int) -> tuple[list, list, list, float]:
    """The reference: each pixel's bin found by comparing with the bin edges, one pixel at a time."""
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for c, ok in zip(conf, correct, strict=True):
        for b in range(bins):
            if b / bins <= c < (b + 1) / bins or (b == bins - 1 and c >= 1):
                sums[b][0] += c
                sums[b][1] += ok
                sums[b][2] += 1
                break
    total = sum(n for _, _, n in sums)
    mean_conf = [s / n if n else math.nan for s, _, n in sums]
    acc = [k / n if n else math.nan for _, k, n in sums]
    ece = sum(n / total * abs(k / n - s / n) for s, k, n in sums if n)
    return mean_conf, acc, [n for _, _, n in sums], ece


def test_reliability_and_ece_equal_a_slow_loop():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 5, 7, 9, generator=g)  # [N, K, H, W]
    logits[0, 2, 0, :4] = 100.0  # confidence exactly 1: the last bin
    probs = logits.softmax(1)
    labels = torch.randint(0, 5, (3, 7, 9), generator=g)
    labels[torch.rand(3, 7, 9, generator=g) < 0.2] = 255
    counts = torch.zeros(report.BINS, 3, dtype=torch.float64)
    conf_all, correct_all = [], []
    for p, y in zip(probs, labels, strict=True):
        conf, pred = p.max(0)
        keep = y != 255
        counts += report.calibration_counts(conf[keep], pred[keep] == y[keep])
        conf_all += conf[keep].double().tolist()
        correct_all += (pred[keep] == y[keep]).tolist()
    rel = report.reliability(counts)
    mean_conf, acc, count, ece = slow_reliability(conf_all, correct_all, report.BINS)
    assert rel["count"] == count and count[-1] >= 4
    assert rel["confidence"] == pytest.approx(mean_conf, abs=1e-9, nan_ok=True)
    assert rel["accuracy"] == pytest.approx(acc, abs=1e-9, nan_ok=True)
    assert rel["ece"] == pytest.approx(ece, abs=1e-12)


def test_image_miou_equals_a_slow_loop():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        pred = torch.randint(0, 6, (8, 10), generator=g)
        target = torch.randint(0, 4, (8, 10), generator=g)  # classes 4, 5: only ever predicted
        target[torch.rand(8, 10, generator=g) < 0.3] = 255
        ious = []
        for c in range(6):
            labelled = [
                (int(p), int(t)) for p, t in zip(pred.flatten(), target.flatten(), strict=True) if t != 255
            ]
            inter = sum(p == c and t == c for p, t in labelled)
            union = sum(p == c or t == c for p, t in labelled)
            if union:
                ious.append(inter / union)
        assert report.image_miou(pred, target, 6) == pytest.approx(100 * sum(ious) / len(ious))
    assert math.isnan(report.image_miou(pred, torch.full_like(target, 255), 6))


def test_pca_2d_equals_the_covariance_eigenvectors():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    points, explained = report.pca_2d(x)
    cov = torch.cov(x.T)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    for j in range(2):
        v = vectors[:, -1 - j]
        ref = (x - x.mean(0)) @ v
        assert torch.allclose(points[:, j].abs(), ref.abs(), atol=1e-9)  # up to the sign
        assert explained[j] == pytest.approx(float(values[-1 - j] / values.sum()))


def test_report_of_an_eval_json_shows_its_numbers(tiny_run, tmp_path):
    src = tmp_path / "best.eval.json"
    shutil.copy(tiny_run / "best.eval.json", src)
    out = report.run(src, say=lambda _: None)
    assert out == tmp_path / "best.eval.report.html"
    page = assert_self_contained(out, tmp_path)
    data = json.loads(src.read_text())
    names = [report.dataset_name(s) for s in VAL]
    rows = {r[0]: r for r in page.tables["metrics"][1:]}
    for spec, name in zip(VAL, names, strict=True):
        d = data["datasets"][spec]
        assert rows[name][1:] == [str(d["num_images"]), *(f"{d[k]:.2f}" for k in ("miou", "aacc", "macc"))]
    per_class = page.tables["per-class"]
    assert per_class[0] == ["class", "colour", *names]
    for row in per_class[1:]:
        for spec, cell in zip(VAL, row[2:], strict=True):
            v = data["datasets"][spec]["per_class_iou"][row[0]]
            assert cell == ("-" if v is None else f"{v:.2f}")
    settings = dict(page.tables["settings"][1:])
    assert settings["checkpoint"] == "best.pt" and settings["protocol"] == "paper"


def test_report_computes_accuracies_an_older_json_lacks(tiny_run, tmp_path):
    data = json.loads((tiny_run / "best.eval.json").read_text())
    for d in data["datasets"].values():
        del d["aacc"], d["macc"], d["per_class_acc"]
    src = tmp_path / "old.eval.json"
    src.write_text(json.dumps(data))
    new = json.loads((tiny_run / "best.eval.json").read_text())
    rows = {r[0]: r for r in parse(report.run(src, say=lambda _: None)).tables["metrics"][1:]}
    for spec in VAL:
        d = new["datasets"][spec]
        assert rows[report.dataset_name(spec)][3:] == [f"{d['aacc']:.2f}", f"{d['macc']:.2f}"]


def test_report_replaces_its_own_page_and_refuses_others(tiny_run, tmp_path):
    folder = tmp_path / "evals"
    folder.mkdir()
    shutil.copy(tiny_run / "best.eval-cache.json", folder / "best.eval-cache.json")
    first = report.run(folder, say=lambda _: None)
    assert first == folder / "report.html" and "metrics" in parse(first).tables
    assert report.run(folder, say=lambda _: None) == first  # its own page: replaced
    foreign = tmp_path / "mine.html"
    foreign.write_text("<html>my notes</html>")
    with pytest.raises(FileExistsError, match="not a page famix report wrote"):
        report.run(folder, out=foreign, say=lambda _: None)
    assert foreign.read_text() == "<html>my notes</html>"


@pytest.mark.parametrize("what", ["missing", "empty folder", "other json"])
def test_report_refuses_what_it_cannot_read_in_one_line(tmp_path, what):
    path = {"missing": tmp_path / "nope", "empty folder": tmp_path, "other json": tmp_path / "x.json"}[what]
    if what == "other json":
        path.write_text('{"a": 1}')
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        report.run(path, say=lambda _: None)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "training run folder" in message
    assert not list(tmp_path.glob("*.html"))


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install selenium)"
    if not (chromium and driver):
        return None, "chromium and chromedriver are not on PATH (apt-get install chromium chromium-driver)"
    return (chromium, driver), ""


def open_headless(path: Path, width: int = 1280, height: int = 900):
    """A headless Chromium (the local chromedriver: no download) showing ``path``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    (chromium, driver), _ = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.get(path.resolve().as_uri())
    return browser


def test_report_renders_in_headless_chromium(tiny_run):
    found, why = _browser()
    if found is None:
        pytest.skip(why)
    out = report.run(tiny_run, say=lambda _: None)
    browser = open_headless(out)
    try:
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    finally:
        browser.quit()
    assert not severe
    assert widths and all(w > 0 for w in widths)


def test_famix_eval_report_and_the_report_command(checkpoint, tmp_path, capsys):
    """`famix eval --report` writes the page beside its JSON; `famix report` and famix.report rewrite it."""
    import famix

    results = tmp_path / "e.json"
    data = "synthetic:day:2:5:size=48"
    main(["eval", str(checkpoint), "--data", data, "--json", str(results), "--report", "--workers", "0"])
    page = tmp_path / "e.report.html"
    assert page.is_file() and report.MARK in page.read_text()
    assert f"report written to {page}" in capsys.readouterr().out
    page.write_text(page.read_text() + "<!-- old -->")
    main(["report", str(results)])
    assert "<!-- old -->" not in page.read_text()
    assert famix.report(results, out=tmp_path / "again.html") == tmp_path / "again.html"
    (tmp_path / "mine.report.html").write_text("my notes")
    with pytest.raises(SystemExit) as exit_:  # a page famix did not write, before evaluating
        main(["eval", str(checkpoint), "--data", data, "--json", str(tmp_path / "mine.json"), "--report"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "mine.report.html" in err
    assert not (tmp_path / "mine.json").exists() and (tmp_path / "mine.report.html").read_text() == "my notes"
