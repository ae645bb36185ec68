"""The ``famix`` command's arguments: one builder per command (``build_parser``), one-line argparse errors.
Help strings state no defaults that live elsewhere: adapt's options come from ``AdaptSettings``' fields."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``famix train: error: ...`` and where to read the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Once(argparse.Action):
    """An option that may be given once (a second ``-c`` would silently replace the first)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(
                f"{option_string} given twice ({getattr(namespace, self.dest)!r}, {values!r}): give one"
            )
        setattr(namespace, self.dest, values)


# famix adapt's options, one per AdaptSettings field (its defaults are shown, never restated here)
ADAPT_HELP = {
    "recipe": "poda: the official PODA recipe exactly (default); famix: ours, batch-independent PIN",
    "iterations": "head fine-tuning steps",
    "lr": "head learning rate, poly schedule",
    "steps": "image-level PIN steps per source crop",
    "pin_lr": "PIN SGD lr (default: the recipe's, poda 1 on the batch-mean loss, famix 0.1 per crop)",
    "pin_batch": "crops per PIN batch (default: poda 16, famix the fine-tuning batch)",
    "weight_decay": "weight decay of the PIN SGD",
    "images": "source crops to mine (default: all)",
    "crop": "crop size (default: poda 768, famix the checkpoint's)",
    "batch_size": "crops per fine-tuning batch (default: poda 8, famix the checkpoint's)",
    "seed": "seed of crops and fine-tuning",
    "amp": "fine-tuning autocast: auto | bf16 | fp16 | off (default: poda off, famix auto)",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "workers": "data-loader processes",
    "ckpt_interval": "steps between resumable checkpoints",
    "save_every": "mining: batches between saves of the partial bank",
}


def _adapt_options(parser: argparse.ArgumentParser) -> None:
    from famix.settings import AdaptSettings

    for f in fields(AdaptSettings):
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        default = "" if f.default is None else f" (default {f.default})"
        help_text = ADAPT_HELP[f.name] + ("" if "default" in ADAPT_HELP[f.name] else default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, help=help_text)


def _with_config(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "-c", "--config", action=_Once, help="YAML config path or preset name (famix/configs/*.yaml)"
    )
    s.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.iterations=1000")


def _add_mine_train(sub) -> None:
    _with_config(sub.add_parser("mine", help="mine a style bank (Augment)"))
    _with_config(sub.add_parser("train", help="train a segmenter (run under torchrun for several GPUs)"))


def _add_reproduce(sub) -> None:
    r = sub.add_parser(
        "reproduce", help="the paper's table: mine, train each seed, evaluate, compare (resumable)"
    )
    _with_config(r)
    r.add_argument(
        "--data-root", help="folder holding gta5/, cityscapes/, bdd100k/, mapillary/, synthia/, acdc/"
    )
    r.add_argument("--weights", help="CLIP weights (sets model.weights)")
    r.add_argument("--seeds", type=int, default=3, help="training runs, seeds run.seed, run.seed + 1, ...")
    r.add_argument("--out", default="runs/reproduce")
    r.add_argument(
        "--targets",
        nargs="+",
        help="dataset specs to evaluate (default: the paper's columns); after overrides",
    )
    r.add_argument("--bank", help="the style bank to mine or reuse (default: <out>/bank.safetensors)")
    r.add_argument("--dry-run", action="store_true", help="print the stages, what is done, the data checks")
    _protocol_option(r)
    _tta_options(r)
    _amp_option(r, "evaluation autocast")


def _protocol_option(parser) -> None:
    parser.add_argument(
        "--protocol",
        default="paper",
        choices=["paper", "mmseg"],
        help="paper: full resolution (FAMix's); mmseg: the Rein family's resize + 512 windows per dataset",
    )


def _amp_option(parser, what: str) -> None:
    from famix.settings import AMP_CHOICES

    parser.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        help=f"{what}: auto (bf16 where native: CUDA, a CPU with AMX or avx512_bf16), bf16, fp16 (CUDA), "
        "off (fp32); default: the precision the checkpoint was trained in",
    )


def _tta_options(parser) -> None:
    parser.add_argument(
        "--flip", action="store_true", help="also average the left-right flipped input's logits"
    )
    parser.add_argument(
        "--scales", type=float, nargs="+", help="average logits over these input scales, e.g. 0.75 1 1.25"
    )


def _add_eval_predict(sub) -> None:
    from famix.settings import DEFAULT_OUTPUTS, OUTPUT_KINDS, VIDEO_OUTPUTS, EvalSettings, PredictSettings

    e = sub.add_parser("eval", help="evaluate a checkpoint on one or more datasets")
    e.add_argument("checkpoint")
    e.add_argument(
        "--data", nargs="+", required=True, help="dataset specs, e.g. cityscapes:data/cityscapes:val"
    )
    e.add_argument("--per-class", action="store_true", help="also print per-class IoU")
    _protocol_option(e)
    e.add_argument(
        "--group",
        help="report IoU per group of the checkpoint's classes: a label set whose ids are its class indices "
        "(e.g. cityscapes_categories: Cityscapes' 7 categories of a 19-class model)",
    )
    e.add_argument(
        "--classes",
        help="the label set the checkpoint must have (it stores its own; for one that stores none, e.g. an "
        "official checkpoint, a label set with its class names gives the ids its data are read through)",
    )
    e.add_argument(
        "--paper-table", action="store_true", help="the paper's layout: C, B, M, S, ACDC n/s/r/f, mean"
    )
    e.add_argument(
        "--json", help="where to write results (default: next to the checkpoint, named by the data evaluated)"
    )
    e.add_argument("--force", action="store_true", help="replace --json even if famix eval did not write it")
    e.add_argument(
        "--condition",
        action="append",
        help='evaluate on the images restyled toward a condition in words ("heavy snow"; image-level PIN at '
        "the style site, labels unchanged); several: a robustness table beside the plain row",
    )
    e.add_argument("--condition-steps", type=int, help="PIN steps per image (0: the images as they are)")
    e.add_argument("--condition-lr", type=float, help="PIN SGD lr per image")
    e.add_argument("--condition-weights", help="CLIP weights of the conditions (default: the checkpoint's)")
    e.add_argument(
        "--report", action="store_true", help="also write the results' HTML page (famix report) beside it"
    )
    e.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loader processes")
    e.add_argument(
        "--batch-size",
        type=int,
        help=f"images per batch (images of other sizes: their own batch; default {EvalSettings.batch_size})",
    )

    pr = sub.add_parser("predict", help="segment images and videos (files, folders, globs)")
    pr.add_argument(
        "checkpoint", help="a checkpoint, or an .onnx file from `famix export` (needs onnxruntime)"
    )
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--out", required=True)
    pr.add_argument(
        "--outputs",
        nargs="+",
        help=f"for images: {' '.join(OUTPUT_KINDS)} (default: {' '.join(DEFAULT_OUTPUTS)})",
    )
    pr.add_argument(
        "--video-output",
        choices=VIDEO_OUTPUTS,
        help=f"for videos (default: {PredictSettings.video_output})",
    )
    pr.add_argument(
        "--server",
        choices=["cityscapes", "acdc"],
        help="write a test server's submission layout (cityscapes: labelIds; acdc: labelTrainIds/), to zip",
    )
    pr.add_argument(
        "--no-legend",
        dest="legend",
        action="store_false",
        help="colour and overlay pictures and videos without the strip of class names and colours below",
    )
    pr.add_argument(
        "--batch-size",
        type=int,
        help=f"images of one size (or video frames) per batch (default {PredictSettings.batch_size})",
    )
    for s in (e, pr):
        s.add_argument("--scale", type=float, default=None, help="test-time input scale, e.g. 0.5")
        s.add_argument("--ensemble", action="store_true", help="average logits at scale 1 and --scale")
        _tta_options(s)
        s.add_argument(
            "--window", type=int, default=None, help="sliding-window inference with this tile size"
        )
        s.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: 2/3 window)")
        s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
        _amp_option(s, "autocast")


def _add_export(sub) -> None:
    from famix.settings import (
        ATOL,
        CALIBRATIONS,
        FORMATS,
        GRAPHS,
        INT8_MIN_AGREEMENT,
        MIN_AGREEMENT,
        ExportSettings,
    )

    x = sub.add_parser(
        "export", help="export a checkpoint's segmenter (ONNX, torch.export, TorchScript), checked"
    )
    x.add_argument("checkpoint")
    x.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="onnx (ONNX Runtime, needs famix[export]), exported-program (.pt2, torch.export.load), "
        "torchscript (torch.jit.load; deprecated by PyTorch)",
    )
    x.add_argument(
        "--size",
        required=True,
        help="HxW input size, multiples of the model's output stride (16 by default), e.g. 512x1024",
    )
    x.add_argument(
        "--dynamic",
        action="store_true",
        help="any batch, height and width >= 2 output strides (ViTs: multiples of the patch; predict pads)",
    )
    x.add_argument("--out", help="output file (default: next to the checkpoint, e.g. best.onnx)")
    x.add_argument("--force", action="store_true", help="replace --out even if famix did not export it")
    x.add_argument(
        "--atol", type=float, default=ATOL, help="refuse if the max abs logit difference exceeds this"
    )
    x.add_argument(
        "--min-agreement",
        type=float,
        help=f"refuse if fewer pixels (%%) have the eager model's argmax (default {MIN_AGREEMENT:g}; "
        f"with --int8 {INT8_MIN_AGREEMENT:g}, on source images)",
    )
    x.add_argument(
        "--graph",
        choices=GRAPHS,
        default="logits",
        help="logits: normalised float32 images [B,3,H,W] -> logits [B,K,H,W]; ids: uint8 RGB images "
        "[B,H,W,3] -> class ids uint8 [B,H,W] (normalisation and argmax in the graph: no famix code needed)",
    )
    x.add_argument(
        "--int8",
        action="store_true",
        help="ONNX only: static int8 quantisation by ONNX Runtime (QDQ, per-channel weights), calibrated",
    )
    x.add_argument(
        "--calibrate",
        choices=CALIBRATIONS,
        help="int8 calibration images: source (as they are, default) or styles (restyled at the style site "
        "by the run's mined style bank, as FAMix trains)",
    )
    x.add_argument(
        "--calibration-images",
        type=int,
        help=f"int8: calibration images (default {ExportSettings.calibration_images})",
    )
    x.add_argument(
        "--calibration-data", help="int8: dataset spec to calibrate on (default: the checkpoint's data.train)"
    )
    x.add_argument("--bank", help="--calibrate styles: the style bank (default: the checkpoint's style.bank)")


def _add_benchmark(sub) -> None:
    from famix.settings import BENCHMARK_FORMATS, BENCHMARK_PRECISIONS, CALIBRATIONS, BenchmarkSettings

    d = BenchmarkSettings()
    b = sub.add_parser(
        "benchmark",
        help="speed, size, memory and mIoU of a checkpoint as eager, compiled, TorchScript, ONNX, ONNX int8",
    )
    b.add_argument(
        "checkpoint", help="a checkpoint, a folder written by famix save, or a Hub id hf:OWNER/NAME"
    )
    b.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="dataset specs for mIoU, space- or comma-separated, e.g. cityscapes:data/cityscapes:val",
    )
    b.add_argument(
        "--formats",
        nargs="+",
        help=f"any of {' '.join(BENCHMARK_FORMATS)} (default: all; eager fp32 is always measured, the base)",
    )
    b.add_argument(
        "--precisions",
        nargs="+",
        help=f"any of {' '.join(BENCHMARK_PRECISIONS)} for the torch formats (default: fp32, and bf16 where "
        "the device has it natively; ONNX files run in their own precision)",
    )
    b.add_argument("--size", help=f"HxW input size of the timed runs (default {d.size[0]}x{d.size[1]})")
    b.add_argument("--batch", type=int, help=f"images per timed run and evaluation batch (default {d.batch})")
    b.add_argument("--warmup", type=int, help=f"untimed runs first (default {d.warmup})")
    b.add_argument("--repeats", type=int, help=f"timed runs; the median is reported (default {d.repeats})")
    b.add_argument("--images", type=int, help="images per dataset for mIoU, spread evenly (default: all)")
    b.add_argument("--threads", type=int, help="torch and ONNX Runtime CPU threads (default: their own)")
    b.add_argument(
        "--calibrate", choices=CALIBRATIONS, help=f"onnx-int8 calibration images (default {d.calibrate})"
    )
    b.add_argument(
        "--calibration-images",
        type=int,
        help=f"onnx-int8: calibration images (default {d.calibration_images})",
    )
    b.add_argument(
        "--calibration-data",
        help="onnx-int8: dataset spec to calibrate on (default: the checkpoint's data.train)",
    )
    b.add_argument("--bank", help="onnx-int8, --calibrate styles: the style bank (default: the checkpoint's)")
    b.add_argument("--device", help=f"cpu | cuda | cuda:N (default {d.device})")
    b.add_argument("--out", help="output folder (default: beside the checkpoint, <stem>.benchmark/)")
    b.add_argument(
        "--force", action="store_true", help="write into --out even where famix benchmark did not write"
    )


def _add_report(sub) -> None:
    r = sub.add_parser(
        "report", help="one self-contained HTML page of a run folder, an eval JSON or a folder of them"
    )
    r.add_argument("path", help="a training run folder, a famix eval results JSON, or a folder holding them")
    r.add_argument("--out", help="the HTML file (default: PATH/report.html, or <stem>.report.html)")
    r.add_argument(
        "--no-model",
        action="store_true",
        help="do not run the checkpoint again (no worst images, no reliability diagram): files only",
    )
    r.add_argument("--worst", type=int, default=4, help="worst images shown per dataset")
    r.add_argument("--max-images", type=int, default=50, help="images per dataset the model pass runs on")


def _add_adapt(sub) -> None:
    a = sub.add_parser(
        "adapt", help="zero-shot adaptation to described target domains (PODA): one model per --target"
    )
    a.add_argument("checkpoint", help="the trained segmenter to adapt (its head is fine-tuned)")
    a.add_argument(
        "--target",
        action="append",
        required=True,
        help='target description, e.g. "driving at night"; auto: what CLIP ranks first for --target-data',
    )
    a.add_argument(
        "--target-data", help="with --target auto: target images (a folder, a glob or a dataset spec)"
    )
    a.add_argument("--data", required=True, help="source dataset spec, e.g. gta5:data/gta5")
    a.add_argument("--out", required=True, help="folder for one run folder per target (<out>/<slug>/)")
    a.add_argument(
        "--weights",
        help="CLIP weights the model was trained from (text tower and CLIP tail; default: the checkpoint's "
        "model.weights where readable here)",
    )
    _adapt_options(a)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the whole recipe on the embedded synthetic world (CPU, minutes)")
    d.add_argument("--out", help="output folder (default famix-demo; famix-demo-vit with --backbone vit)")
    d.add_argument(
        "--backbone", choices=["rn", "vit"], default="rn", help="tiny CLIP ResNet (default) or tiny CLIP ViT"
    )
    d.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    d.add_argument(
        "--amp",
        choices=["off", "auto", "bf16"],
        default="off",
        help="off: fp32, as the recorded tables (default); auto: bf16 where the CPU has it natively (faster, "
        "other numbers: docs/benchmarks.md)",
    )
    d.add_argument("--seed", type=int, default=0, help="first seed")
    d.add_argument("--seeds", type=int, help="number of seeds (default 1; 3 with --adapt)")
    d.add_argument("--ablation", action="store_true", help="the paper's Freeze/Augment/Mix grid + a control")
    d.add_argument(
        "--adapt",
        nargs="?",
        const="night",
        metavar="WORDS",
        help="adapt the source-only model to a held-out style named in words (famix adapt; default 'night')",
    )
    d.add_argument(
        "--sources",
        action="store_true",
        help="two labelled sources: FAMix trained on day + desert against each alone (data.train as a list)",
    )


def _add_datasets(sub) -> None:
    ds = sub.add_parser("datasets", help="list dataset names and layouts, or check a dataset folder")
    ds.add_argument(
        "action", nargs="?", choices=["check"], help="check NAME ROOT: counts, pairing, label values"
    )
    ds.add_argument("name", nargs="?", help="dataset name (gta5, cityscapes, acdc:night, ...) or a full spec")
    ds.add_argument("root", nargs="?", help="dataset root folder")
    ds.add_argument(
        "--classes",
        help="the label set the labels are read through (folder: datasets; default: the 19 trainIds)",
    )
    ds.add_argument(
        "--decode", type=int, help="decode at most this many pairs per split, spread evenly (default: all)"
    )


def _add_pretrain(sub) -> None:
    pt = sub.add_parser("pretrain-tiny-clip", help="pretrain the demo's tiny CLIP on the synthetic world")
    pt.add_argument("--out", required=True, help="folder for the weights, model card and loss curve")
    pt.add_argument(
        "--config", default="tiny-clip", help="tiny-clip (ResNet) | tiny-vit-clip (ViT) | a .json"
    )
    pt.add_argument("--steps", type=int, default=1100)
    pt.add_argument("--batch", type=int, default=128)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 = reproducible timing)")


def _add_convert(sub) -> None:
    c = sub.add_parser("convert", help="convert official checkpoints / banks / CLIP weights")
    c.add_argument("kind", choices=["checkpoint", "bank", "clip"])
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling an official style bank (runs code from the file: trusted files only)",
    )
    c.add_argument("--force", action="store_true", help="replace dst even if it is not a file of this kind")


def _add_share(sub) -> None:
    sv = sub.add_parser(
        "save", help="save a model as a folder to share: safetensors, config.json, model card"
    )
    sv.add_argument("checkpoint", help="a checkpoint, a saved folder or a Hub id hf:OWNER/NAME")
    sv.add_argument("folder")
    pu = sub.add_parser("push", help="upload a model to the Hugging Face Hub (needs famix[hub] and a login)")
    pu.add_argument("checkpoint", help="a checkpoint or a folder written by famix save")
    pu.add_argument("repo", help="OWNER/NAME on the Hub")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--revision", help="a branch to upload to (default: main)")
    for s in (sv, pu):
        s.add_argument(
            "--bank",
            nargs="?",
            const="auto",
            help="include the style bank: PATH, or no value for the one the model was trained with",
        )
    sv.add_argument("--force", action="store_true", help="write into a folder famix save did not make")
    sv.add_argument(
        "--space",
        action="store_true",
        help="also app.py and requirements.txt: a Hugging Face Space serving famix app",
    )


def _add_diagnose(sub) -> None:
    d = sub.add_parser(
        "diagnose", help="what a model makes of target images: confidence, out-of-domain score, conditions"
    )
    d.add_argument("checkpoint", help="a checkpoint, a saved folder or a Hub id hf:OWNER/NAME")
    d.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="target sets: dataset specs (labelled), image folders or globs",
    )
    d.add_argument(
        "--words", nargs="+", default=[], help="your own condition words, rated beside the standard ones"
    )
    d.add_argument("--weights", help="CLIP weights of the conditions (default: the model's)")
    d.add_argument(
        "--source",
        help="the source spec of the out-of-domain reference (default: the reference famix train stored in "
        "the checkpoint, else the model's data.train)",
    )
    d.add_argument(
        "--source-images", type=int, default=32, help="source images of that reference (default 32)"
    )
    d.add_argument("--maps", type=int, default=8, help="confidence maps written per set (default 8)")
    d.add_argument(
        "--max-images", type=int, help="at most this many images per set, spread evenly (default all)"
    )
    d.add_argument("--out", help="output folder (default: beside the checkpoint, <stem>.diagnose/)")
    d.add_argument("--device", default="auto")


def _add_app(sub) -> None:
    a = sub.add_parser("app", help="a page to try a model in the browser: classes, conditions, adaptation")
    a.add_argument("checkpoint", nargs="?", help="a checkpoint, a saved folder or a Hub id hf:OWNER/NAME")
    a.add_argument(
        "--demo",
        action="store_true",
        help="serve the miniature world's FAMix model (famix demo's; trained if absent)",
    )
    a.add_argument("--quick", action="store_true", help="with --demo: the quick demo's model (smoke test)")
    a.add_argument(
        "--demo-out", default="famix-demo", help="with --demo: the demo's folder (default famix-demo)"
    )
    a.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    a.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    a.add_argument("--weights", help="CLIP weights for the conditions and adaptation (default: the model's)")
    a.add_argument("--data", help="source images adaptation restyles (default: the model's data.train)")
    a.add_argument("--out", default="famix-app", help="folder for adapted models (default famix-app)")
    _adapt_options(a)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="famix", description="FAMix: language-guided domain-generalised segmentation")
    p.add_argument("--traceback", action="store_true", help="on an error, show the full Python traceback")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_mine_train, _add_reproduce, _add_eval_predict, _add_export, _add_benchmark, _add_adapt,
                _add_demo, _add_datasets, _add_pretrain, _add_convert, _add_share, _add_report,
                _add_app, _add_diagnose):  # fmt: skip
        add(sub)
    return p
