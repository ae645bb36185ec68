"""The installed package works outside a checkout: build a wheel, install it into a bare folder and run
`famix train -c tiny` from elsewhere (presets, assets and the dataset entry point come from the wheel)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from famix.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "famix"


def data_files() -> set[str]:
    """Every non-Python file of the package source (presets, tiny-CLIP assets, ...), as wheel paths."""
    return {
        p.relative_to(PACKAGE.parent).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


def test_wheel_ships_presets_and_assets_and_trains_outside_the_checkout(tmp_path):
    # Build from a copy of the packaging inputs so no stale build/ folder or egg-info can fill the wheel.
    src = tmp_path / "src"
    shutil.copy(ROOT / "pyproject.toml", src.parent / "pyproject.toml")
    shutil.copy(ROOT / "README.md", src.parent / "README.md")
    shutil.copytree(PACKAGE, src / "famix", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, tmp_path], check=True)
    (wheel,) = wheels.glob("famix-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = data_files()
    assert {"famix/configs/tiny.yaml", "famix/assets/tiny-clip.safetensors"} <= expected
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[famix.datasets]\nsynthetic = famix.world.synthetic:ENTRY" in text  # synthetic: specs, no import

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import famix; print(famix.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), (
        f"famix imported from {where.stdout}, not the wheel"
    )
    run = elsewhere / "run"
    args = ["train", "-c", "tiny", "train.iterations=1", "style.mix=none", "data.val=[]"]
    args += ["data.train=synthetic:day:4:size=64", f"train.out={run}"]
    proc = subprocess.run(
        [sys.executable, "-m", "famix", *args], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run / "latest.pt").is_file() and (run / "config.yaml").is_file()


def test_unknown_preset_lists_the_presets():
    with pytest.raises(FileNotFoundError, match=r"config gta5_rn5 not found.*'gta5_rn50'.*'tiny'"):
        load_config("gta5_rn5")
    assert load_config("tiny").model.backbone == "tiny-rn"


def test_license_and_citation_agree_with_the_package():
    """The repository's LICENSE is the license pyproject declares; CITATION.cff parses, cites the FAMix
    paper (and PODA) and names this version."""
    import tomllib
    import yaml

    from famix.version import __version__

    root = ROOT
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (root / "LICENSE").read_text().startswith("MIT License\n")
    cff = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert str(cff["version"]) == __version__
    cited = cff["preferred-citation"]
    assert cited["title"] == "A Simple Recipe for Language-guided Domain Generalized Segmentation"
    assert {"type": "other", "value": "arXiv:2311.17922"} in cited["identifiers"]
    assert [a["family-names"] for a in cited["authors"]][0] == "Fahes"
    assert any("arXiv:2212.03241" in str(r["identifiers"]) for r in cff["references"])
