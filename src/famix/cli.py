"""The ``famix`` command line: parse, build a config, call one stage (``famix.stages``), print. Under torchrun
each command joins the process group once (``distributed.session``) and leaves it when it ends."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
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


def _config(args):
    from famix.config import load_config

    return load_config(args.config, args.overrides)


def _session(device: str):
    from famix.engine.distributed import session

    return session(device)


def cmd_mine(args) -> None:
    from famix.stages import mine

    cfg = _config(args)
    with _session(cfg.run.device) as info:
        bank = mine.run(cfg)
    if info.main:  # under torchrun rank 0 holds the bank
        print(f"{len(bank)} styles; per class: {json.dumps(bank.counts())}")


def cmd_train(args) -> None:
    from famix.stages import train

    cfg = _config(args)
    with _session(cfg.run.device) as info:
        result = train.run(cfg)
    if info.main:
        print(json.dumps(result))


def _tta(args):
    from famix.engine.inference import InferenceSettings

    return InferenceSettings(args.scale, args.ensemble, args.window, args.stride)


def cmd_eval(args) -> None:
    from famix.engine.results import format_paper_table, format_table
    from famix.stages import evaluate

    settings = evaluate.EvalSettings(_tta(args), args.amp, args.device, args.batch_size, args.workers)
    with _session(args.device) as info:  # under torchrun each rank evaluates its share of every dataset
        results, names = evaluate.run(args.checkpoint, args.data, settings, report=args.json or "auto")
    if info.main:
        if args.paper_table:
            print(format_paper_table(results))
        print(format_table(results, names, per_class=args.per_class))


def cmd_predict(args) -> None:
    from famix.stages import predict

    written = predict.run(
        args.checkpoint,
        args.inputs,
        args.out,
        _tta(args),
        args.outputs,
        args.device,
        args.amp,
        args.batch_size,
        args.video_output,
    )
    print(f"{len(written)} prediction files in {args.out}")


def cmd_export(args) -> None:
    from famix.stages import export

    out, check = export.run(
        args.checkpoint,
        args.format,
        args.size,
        dynamic=args.dynamic,
        out=args.out,
        atol=args.atol,
        min_agreement=args.min_agreement,
        force=args.force,
    )
    if check is not None:
        print(f"checked against the checkpoint's model: {check.describe()}")
        print(f"wrote {out}")


def cmd_reproduce(args) -> None:
    from famix.stages import reproduce

    cfg = _config(args)
    if args.weights:
        cfg.model.weights = args.weights
    with _session(cfg.run.device) as info:
        plan = reproduce.make_plan(cfg, args.out, args.seeds, args.data_root, args.targets, args.bank)
        if args.dry_run:
            text, ok = reproduce.dry_run(plan)
            print(text)
            if not ok:
                sys.exit(1)
            return
        result = reproduce.run(plan)
    if info.main:
        print(result["table"])
        print(f"table and per-class IoU written to {plan.out}/results.md and results.json")


def cmd_adapt(args) -> None:
    from famix.stages.adapt import AdaptSettings, run

    given = {
        f.name: getattr(args, f.name) for f in fields(AdaptSettings) if getattr(args, f.name) is not None
    }
    settings = AdaptSettings(**given)  # options not given: AdaptSettings' defaults
    written = run(args.checkpoint, args.target, args.data, args.out, args.weights, settings)  # one process
    for target, path in written.items():
        print(f"{target!r}: {path}")


def cmd_demo(args) -> None:
    out = args.out or ("famix-demo" if args.backbone == "rn" else f"famix-demo-{args.backbone}")
    if args.adapt is not None:
        from famix.demo.adaptation import run_adapt_demo

        run_adapt_demo(out, args.adapt, args.quick, args.seed, seeds=args.seeds or 3, backbone=args.backbone)
        return
    from famix.demo.run import run_demo

    run_demo(
        out, args.quick, args.seed, ablation=args.ablation, seeds=args.seeds or 1, backbone=args.backbone
    )


def cmd_datasets(args) -> None:
    from famix.data.check import check_dataset, exit_code, format_check
    from famix.data.datasets import describe_datasets

    if args.action is None:
        print(describe_datasets())
        return
    if args.action != "check" or not args.name:
        raise ValueError(
            "usage: famix datasets [check NAME ROOT]  (NAME may be a full spec, e.g. acdc:night)"
        )
    report = check_dataset(args.name, args.root, decode=args.decode)
    print(format_check(report))
    sys.exit(exit_code(report))


def cmd_pretrain_tiny_clip(args) -> None:
    from famix.world.pretrain import pretrain_tiny_clip

    result = pretrain_tiny_clip(
        args.out, steps=args.steps, batch=args.batch, seed=args.seed, config=args.config, threads=args.threads
    )
    print(json.dumps(result["zero_shot"], indent=1))


def cmd_convert(args) -> None:
    from famix.stages import convert

    dst = convert.run(args.kind, args.src, args.dst, trust_pickle=args.trust_pickle, force=args.force)
    print(f"famix convert: {dst} holds the converted {args.kind}")


# famix adapt's options, one per AdaptSettings field (its defaults are shown, never restated here)
ADAPT_HELP = {
    "iterations": "head fine-tuning steps",
    "lr": "head learning rate, poly schedule",
    "steps": "image-level PIN steps per source crop",
    "pin_lr": "PIN SGD lr per crop: how far styles move",
    "images": "source crops to mine (default: all)",
    "crop": "crop size (default: the checkpoint's)",
    "batch_size": "crops per batch (default: the checkpoint's)",
    "seed": "seed of crops and fine-tuning",
    "amp": "autocast of the fine-tuning on CUDA: bf16 | fp16 | off",
    "device": "auto | cpu | cuda | cuda:N | mps",
    "workers": "data-loader processes",
    "ckpt_interval": "steps between resumable checkpoints",
    "save_every": "mining: batches between saves of the partial bank",
}


def _adapt_options(parser: argparse.ArgumentParser) -> None:
    from famix.stages.adapt import AdaptSettings

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


def _add_eval_predict(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint on one or more datasets")
    e.add_argument("checkpoint")
    e.add_argument(
        "--data", nargs="+", required=True, help="dataset specs, e.g. cityscapes:data/cityscapes:val"
    )
    e.add_argument("--per-class", action="store_true", help="also print per-class IoU")
    e.add_argument(
        "--paper-table", action="store_true", help="the paper's layout: C, B, M, S, ACDC n/s/r/f, mean"
    )
    e.add_argument(
        "--json", help="where to write results (default: next to the checkpoint, named by the data evaluated)"
    )
    e.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loader processes")
    e.add_argument(
        "--batch-size", type=int, default=4, help="images per batch (images of other sizes: their own batch)"
    )

    pr = sub.add_parser("predict", help="segment images and videos (files, folders, globs)")
    pr.add_argument(
        "checkpoint", help="a checkpoint, or an .onnx file from `famix export` (needs onnxruntime)"
    )
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--out", required=True)
    pr.add_argument("--outputs", nargs="+", default=["trainid", "color", "overlay"], help="for images")
    pr.add_argument("--video-output", default="overlay", choices=["overlay", "color"], help="for videos")
    pr.add_argument(
        "--batch-size", type=int, default=4, help="images of one size (or video frames) per batch"
    )
    for s in (e, pr):
        s.add_argument("--scale", type=float, default=None, help="test-time input scale, e.g. 0.5")
        s.add_argument("--ensemble", action="store_true", help="average logits at scale 1 and --scale")
        s.add_argument(
            "--window", type=int, default=None, help="sliding-window inference with this tile size"
        )
        s.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: 2/3 window)")
        s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
        s.add_argument(
            "--amp", default="bf16", choices=["bf16", "fp16", "off"], help="autocast dtype on CUDA"
        )


def _add_export(sub) -> None:
    from famix.engine.export import ATOL, FORMATS, MIN_AGREEMENT

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
        default=MIN_AGREEMENT,
        help="refuse if fewer pixels (%%) have the eager model's argmax",
    )


def _add_adapt(sub) -> None:
    a = sub.add_parser(
        "adapt", help="zero-shot adaptation to described target domains (PODA): one model per --target"
    )
    a.add_argument("checkpoint", help="the trained segmenter to adapt (its head is fine-tuned)")
    a.add_argument(
        "--target", action="append", required=True, help='target description, e.g. "driving at night"'
    )
    a.add_argument("--data", required=True, help="source dataset spec, e.g. gta5:data/gta5")
    a.add_argument("--out", required=True, help="folder for one run folder per target (<out>/<slug>/)")
    a.add_argument("--weights", help="CLIP weights the model was trained from (text tower and CLIP tail)")
    _adapt_options(a)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the whole recipe on the embedded synthetic world (CPU, minutes)")
    d.add_argument("--out", help="output folder (default famix-demo; famix-demo-vit with --backbone vit)")
    d.add_argument(
        "--backbone", choices=["rn", "vit"], default="rn", help="tiny CLIP ResNet (default) or tiny CLIP ViT"
    )
    d.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
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


def _add_datasets(sub) -> None:
    ds = sub.add_parser("datasets", help="list dataset names and layouts, or check a dataset folder")
    ds.add_argument(
        "action", nargs="?", choices=["check"], help="check NAME ROOT: counts, pairing, label values"
    )
    ds.add_argument("name", nargs="?", help="dataset name (gta5, cityscapes, acdc:night, ...) or a full spec")
    ds.add_argument("root", nargs="?", help="dataset root folder")
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="famix", description="FAMix: language-guided domain-generalised segmentation")
    p.add_argument("--traceback", action="store_true", help="on an error, show the full Python traceback")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_mine_train, _add_reproduce, _add_eval_predict, _add_export, _add_adapt, _add_demo,
                _add_datasets, _add_pretrain, _add_convert):  # fmt: skip
        add(sub)
    return p


COMMANDS = {
    "mine": cmd_mine,
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "reproduce": cmd_reproduce,
    "adapt": cmd_adapt,
    "demo": cmd_demo,
    "datasets": cmd_datasets,
    "pretrain-tiny-clip": cmd_pretrain_tiny_clip,
    "convert": cmd_convert,
}


def _one_line(error: BaseException) -> str:
    """An error as the one line a user reads: a data-loader worker's error without the worker's traceback."""
    text = str(error)
    if "Original Traceback" in text:  # raised in a DataLoader worker: keep the original message
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (OSError, ValueError, ImportError) as e:
        if args.traceback:
            traceback.print_exc()
            sys.exit(2)
        print(f"famix {args.command}: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
