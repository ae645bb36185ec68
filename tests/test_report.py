"""famix report: one self-contained HTML page of a real tiny training run and of a real famix eval JSON."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from famix.cli import main
from famix.config import load_config
from famix.stages import report, train

VAL = ["synthetic:day:4:99:size=64", "synthetic:night:4:98:size=64"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-step run validated every 2 steps on two datasets, and a famix eval JSON of its best.pt."""
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(
        "tiny",
        [
            "data.train=synthetic:day:16:size=64",
            f"data.val=[{','.join(VAL)}]",
            "style.mix=none",
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
