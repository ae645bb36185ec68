"""The ``famix`` command line: parse (``famix.cli_parser``), build a config, call one stage
(``famix.stages``), print. Under torchrun each command joins the process group once
(``distributed.session``) and leaves it when it ends."""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback
from dataclasses import fields

from famix.cli_parser import build_parser
from famix.engine.interrupt import Interrupted


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
    from famix.settings import InferenceSettings

    scales = tuple(args.scales) if args.scales else None
    # reproduce's evaluation takes --flip / --scales only (its protocols set the rest)
    scale, ensemble, window, stride = (
        getattr(args, k, None) for k in ("scale", "ensemble", "window", "stride")
    )
    return InferenceSettings(scale, bool(ensemble), window, stride, args.flip, scales)


def _given(args, *names: str) -> dict:
    """The options among ``names`` given on the command line (the rest keep their settings' defaults)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def cmd_eval(args) -> None:
    from famix.engine.results import format_paper_table, format_table
    from famix.settings import EvalSettings
    from famix.stages import evaluate

    settings = EvalSettings(
        tta=_tta(args),
        amp=args.amp,
        device=args.device,
        workers=args.workers,
        classes=args.classes,
        group=args.group,
        protocol=args.protocol,
        **_given(args, "batch_size", "condition_steps", "condition_lr", "condition_weights"),
    )
    if args.condition:  # the plain row and one per condition
        from famix.engine.results import format_robustness

        if args.paper_table or args.per_class:
            raise ValueError("--condition prints the robustness table: drop --paper-table / --per-class")
        with _session(args.device) as info:
            rows, _ = evaluate.robustness(
                args.checkpoint, args.data, args.condition, settings, report=args.json or "auto",
                force=args.force, html=args.report,
            )  # fmt: skip
        if info.main:
            print(format_robustness(rows))
        return
    with _session(args.device) as info:  # under torchrun each rank evaluates its share of every dataset
        results, names = evaluate.run(
            args.checkpoint,
            args.data,
            settings,
            report=args.json or "auto",
            force=args.force,
            html=args.report,
        )
    if info.main:
        if args.paper_table:
            print(format_paper_table(results))
        print(format_table(results, names, per_class=args.per_class))


def cmd_predict(args) -> None:
    from famix.settings import PredictSettings
    from famix.stages import predict

    if args.server is not None and args.outputs is not None:
        raise ValueError(
            f"--server {args.server} writes the server's own files (one per image), so --outputs is not "
            "used: drop --outputs, or --server"
        )
    settings = PredictSettings(
        tta=_tta(args),
        amp=args.amp,
        device=args.device,
        server=args.server,
        legend=args.legend,
        **_given(args, "outputs", "video_output", "batch_size"),
    )
    written = predict.run(args.checkpoint, args.inputs, args.out, settings)
    print(f"{len(written)} prediction files in {args.out}")


def cmd_export(args) -> None:
    from famix.settings import ExportSettings
    from famix.stages import export

    settings = ExportSettings(
        args.format,
        args.size,
        args.dynamic,
        args.atol,
        args.min_agreement,
        force=args.force,
        graph=args.graph,
        int8=args.int8,
        **_given(args, "calibrate", "calibration_images", "calibration_data", "bank"),
    )
    out, check = export.run(args.checkpoint, settings, out=args.out)
    if check is not None:
        print(f"checked against the checkpoint's model: {check.describe()}")
        print(f"wrote {out}")


def _list(values: list[str] | None) -> list[str] | None:
    """``--data a,b c``: the values given, space- and comma-separated (None: not given)."""
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def cmd_benchmark(args) -> None:
    from famix.settings import BenchmarkSettings
    from famix.stages import benchmark

    given = _given(args, "formats", "precisions", "size", "batch", "warmup", "repeats", "images", "threads")
    given.update(_given(args, "calibrate", "calibration_images", "calibration_data", "bank", "device"))
    for name in ("formats", "precisions"):
        if name in given:
            given[name] = tuple(_list(given[name]))
    settings = BenchmarkSettings(**given)  # options not given: BenchmarkSettings' defaults
    benchmark.run(args.checkpoint, _list(args.data), settings, out=args.out, force=args.force)


def cmd_reproduce(args) -> None:
    from famix.stages import reproduce

    cfg = _config(args)
    if args.weights:
        cfg.model.weights = args.weights
    with _session(cfg.run.device) as info:
        evaluation = dataclasses.replace(reproduce.EVAL, tta=_tta(args), amp=args.amp, protocol=args.protocol)
        plan = reproduce.make_plan(
            cfg, args.out, args.seeds, args.data_root, args.targets, args.bank, evaluation=evaluation
        )
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
    written = run(
        args.checkpoint,
        args.target,
        args.data,
        args.out,
        args.weights,
        settings,
        target_data=args.target_data,
    )  # one process
    for target, path in written.items():
        print(f"{target!r}: {path}")


def cmd_demo(args) -> None:
    out = args.out or ("famix-demo" if args.backbone == "rn" else f"famix-demo-{args.backbone}")
    if args.sources and (args.adapt is not None or args.ablation):
        raise ValueError("--sources is a demo of its own: drop --adapt / --ablation, or run them separately")
    if args.sources:
        from famix.demo.sources import run_sources_demo

        run_sources_demo(out, args.quick, args.seed, args.seeds or 1, args.backbone, args.amp)
        return
    if args.adapt is not None:
        from famix.demo.adaptation import run_adapt_demo

        if args.amp != "off":
            raise ValueError(f"--amp {args.amp} is for the demo's training runs: drop it with --adapt (fp32)")

        run_adapt_demo(out, args.adapt, args.quick, args.seed, seeds=args.seeds or 3, backbone=args.backbone)
        return
    from famix.demo.run import run_demo

    run_demo(
        out,
        args.quick,
        args.seed,
        ablation=args.ablation,
        seeds=args.seeds or 1,
        backbone=args.backbone,
        amp=args.amp,
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
    report = check_dataset(args.name, args.root, decode=args.decode, classes=args.classes)
    print(format_check(report))
    sys.exit(exit_code(report))


def cmd_pretrain_tiny_clip(args) -> None:
    from famix.world.pretrain import pretrain_tiny_clip

    result = pretrain_tiny_clip(
        args.out, steps=args.steps, batch=args.batch, seed=args.seed, config=args.config, threads=args.threads
    )
    print(json.dumps(result["zero_shot"], indent=1))


def cmd_report(args) -> None:
    from famix.stages import report

    for name in ("worst", "max_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a number >= 1")
    report.run(  # it says where the page is
        args.path, out=args.out, say=print, model=not args.no_model, k=args.worst, max_images=args.max_images
    )


def cmd_convert(args) -> None:
    from famix.stages import convert

    dst = convert.run(args.kind, args.src, args.dst, trust_pickle=args.trust_pickle, force=args.force)
    print(f"famix convert: {dst} holds the converted {args.kind}")


def cmd_save(args) -> None:
    from famix.stages import share

    share.save(args.checkpoint, args.folder, bank=args.bank, force=args.force, space=args.space)


def cmd_push(args) -> None:
    from famix.stages import share

    share.push(args.checkpoint, args.repo, private=args.private, revision=args.revision, bank=args.bank)


def cmd_diagnose(args) -> None:
    from famix.stages import diagnose

    settings = diagnose.DiagnoseSettings(
        words=tuple(args.words),
        weights=args.weights,
        source=args.source,
        source_images=args.source_images,
        maps=args.maps,
        max_images=args.max_images,
        device=args.device,
    )
    diagnose.run(args.checkpoint, args.data, settings, out=args.out)


def cmd_app(args) -> None:
    from famix.settings import AdaptSettings, AppSettings

    adapt = {
        f.name: getattr(args, f.name) for f in fields(AdaptSettings) if getattr(args, f.name) is not None
    }
    if args.demo == (args.checkpoint is not None):
        raise ValueError("famix app: give a checkpoint (or a saved folder, or hf:OWNER/NAME), or --demo")
    if args.quick and not args.demo:
        raise ValueError("--quick is for --demo (the quick demo's model)")
    AppSettings(host=args.host, port=args.port)  # the address checked before the demo's model is trained
    checkpoint = args.checkpoint
    if args.demo:  # the demo's model, with the demo's adaptation sizes (CPU, about a minute)
        from famix.demo.adaptation import adapt_settings
        from famix.demo.run import demo_model

        adapt = {**dataclasses.asdict(adapt_settings(args.quick, 0)), **adapt}
        checkpoint = demo_model(args.demo_out, args.quick)
    settings = AppSettings(
        host=args.host,
        port=args.port,
        weights=args.weights,
        data=args.data,
        out=args.out,
        device=adapt.get("device", "auto"),
        adapt=AdaptSettings(**adapt),
    )
    from famix.stages import app

    app.run(checkpoint, settings)


COMMANDS = {
    "mine": cmd_mine,
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "benchmark": cmd_benchmark,
    "reproduce": cmd_reproduce,
    "adapt": cmd_adapt,
    "demo": cmd_demo,
    "datasets": cmd_datasets,
    "pretrain-tiny-clip": cmd_pretrain_tiny_clip,
    "convert": cmd_convert,
    "save": cmd_save,
    "push": cmd_push,
    "report": cmd_report,
    "app": cmd_app,
    "diagnose": cmd_diagnose,
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
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C / SIGTERM: what was saved, and how to go on
        if args.traceback:
            traceback.print_exc()
        said = _one_line(e) if isinstance(e, Interrupted) else "stopped before anything resumable was saved"
        print(f"famix {args.command}: interrupted: {said}", file=sys.stderr)
        sys.exit(130)
