"""``wnc-onnx finetune``: step 3 of the paper on the command line, over ``wnc_onnx.finetune``.

wnc-onnx finetune compressed.onnx tuned.onnx --train train.npz --val val.npz [options]

Data: an .npz file with arrays ``x`` and ``y``, or a folder with one subfolder of images
per class. Writes the tuned model atomically, its history as JSON and its accuracy curve
as PNG; checkpoints after every epoch and on Ctrl-C (``--resume`` continues).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from wnc_onnx.cli.compress import check_parent_path, float_parent_path
from wnc_onnx.cli.options import EXIT_INTERRUPTED, add_pq_arguments, parse_floats, pq_options, require_faiss
from wnc_onnx.data.arrays import load_inputs_npz
from wnc_onnx.data.images import UnlabeledImages, load_image_folder, visible
from wnc_onnx.errors import WncError
from wnc_onnx.finetune.backends.ort.runtime import require_training
from wnc_onnx.finetune.backends.torch.run import require_torch
from wnc_onnx.finetune.distill import load_teacher, parse_overrides
from wnc_onnx.finetune.evaluate import against_teacher, evaluate
from wnc_onnx.finetune.sources import BatchSource, ModelSpec, model_spec
from wnc_onnx.finetune.trainer import FinetuneConfig, FinetuneInterrupted, finetune, processes
from wnc_onnx.finetune.trainer import FinetuneConfig as C
from wnc_onnx.io import external_data
from wnc_onnx.io.model_io import check_output_path, load_model, staged_model, write_text_atomic
from wnc_onnx.report.plot import available, plot_history, pyplot
from wnc_onnx.rewrite.int8_flow import first_samples, samples_in
from wnc_onnx.rewrite.int8_quantize import count_quantized, quantize, quantized_nodes, tools


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="compressed model (.onnx); never modified")
    p.add_argument("output", help="where to write the fine-tuned model (written atomically)")
    d = p.add_argument_group("data")
    d.add_argument(
        "--train",
        required=True,
        metavar="DATA",
        help="training data: an .npz (x and y; with --teacher the model's inputs alone do: x, or one array per "
        "input name), or an image folder (one subfolder per class; with --teacher any folder of images)",
    )
    d.add_argument("--val", metavar="DATA", help="validation data, scored after every epoch (same kinds)")
    d.add_argument(
        "--image-size",
        metavar="H,W",
        help="resize images to H,W (image folders; default: the model input's static height and width)",
    )
    d.add_argument(
        "--mean", default="0", metavar="M[,M,M]", help="image folders: subtract per channel, pixels in [0,1]"
    )
    d.add_argument("--std", default="1", metavar="S[,S,S]", help="image folders: then divide per channel")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=C.epochs, help="passes over the training data")
    t.add_argument("--lr", type=float, default=C.lr, help="base learning rate")
    t.add_argument("--batch-size", type=int, default=C.batch_size, help="samples per step (torchrun: all processes)")
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default=C.optimizer, help="sgd: plain, no momentum")
    t.add_argument(
        "--loss",
        choices=("cross_entropy", "mse"),
        default=C.loss,
        help="cross_entropy: integer class labels, (N, classes) output; mse: float targets shaped like the output",
    )
    t.add_argument("--lr-step", type=int, default=C.lr_step, metavar="E", help="decay the rate every E epochs")
    t.add_argument("--lr-gamma", type=float, default=C.lr_gamma, metavar="G", help="by this factor (1: constant)")
    t.add_argument("--seed", type=int, default=C.seed, help="shuffling order")
    t.add_argument("--threads", type=int, default=C.threads, help="CPU threads per process (default: 0, all cores)")
    k = p.add_argument_group("distillation from the original model (no labels needed; docs/finetune.md)")
    k.add_argument(
        "--teacher",
        metavar="ONNX",
        help="the original (uncompressed) model: the compressed one learns its outputs and, by default, the "
        "outputs of the layers the pass rewrote, on the training inputs; labels are not used (see --alpha)",
    )
    k.add_argument(
        "--temperature", type=float, default=C.temperature, help="softens the class scores both models are compared on"
    )
    k.add_argument(
        "--alpha",
        type=float,
        metavar="A",
        help="with labelled data: the label loss's share (0..1); the teacher's gets the rest",
    )
    k.add_argument(
        "--features",
        default="auto",
        metavar="auto|none|T1,T2",
        help="intermediate tensors matched to the teacher's: auto, the rewritten layers' outputs; none; or names",
    )
    k.add_argument(
        "--feature-weight", type=float, default=C.feature_weight, metavar="W", help="the feature terms' weight in all"
    )
    k.add_argument(
        "--distill-loss",
        action="append",
        default=[],
        metavar="OUTPUT=kl|mse|none",
        help="override the loss chosen for an output (repeatable): kl for class scores, mse for values",
    )
    k.add_argument(
        "--output-weight", action="append", default=[], metavar="OUTPUT=W", help="weight of an output's term"
    )
    d.add_argument(
        "--augment",
        default="",
        metavar="crop,color",
        help="augment image inputs per batch: crop (random resized crop), color (contrast, brightness); flip and "
        "rotate only when named (they change some tasks' answers); off by default",
    )
    t.add_argument(
        "--backend",
        choices=("ort", "torch"),
        default=None,
        help="ort: onnxruntime-training, one CPU process (the default with labels); torch: PyTorch, also several "
        "processes under torchrun (run on CPUs with gloo; GPUs and NCCL not yet run: docs/finetune.md); the "
        "default with --teacher",
    )
    t.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="--backend torch: where to train (default: cuda when available; cuda is not yet run); under torchrun "
        "each process takes GPU LOCAL_RANK",
    )

    add_pq_arguments(p, finetune=True)
    c = p.add_argument_group("checkpoints")
    c.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="weights + optimizer state after every epoch and on Ctrl-C (default: OUTPUT.ckpt, removed on success)",
    )
    c.add_argument("--resume", action="store_true", help="continue the run saved in the checkpoint folder")
    o = p.add_argument_group("output")
    o.add_argument("--reference", metavar="ONNX", help="original (uncompressed) model: its --val accuracy is drawn")
    o.add_argument("--history", metavar="JSON", help="per-epoch history (default: OUTPUT stem + .history.json)")
    o.add_argument("--plot", metavar="PNG", help="accuracy curve (default: OUTPUT stem + .curve.png, if matplotlib)")
    o.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights to OUTPUT.data (default: when above 2 GB)",
    )
    o.add_argument(
        "--int8",
        action="store_true",
        help="quantize the tuned model to int8 before writing it (onnxruntime's static QDQ per channel, calibrated "
        "on the first 256 training inputs); the tuned float model is written beside it as OUTPUT.float.onnx",
    )
    o.add_argument("--json", action="store_true", help="print the history as JSON instead of the table")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    o.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def _image_size(a: argparse.Namespace, dims: tuple[int | None, ...]) -> tuple[int, int]:
    if a.image_size:
        size = parse_floats(a.image_size, "--image-size")
        if len(size) != 2 or any(s < 1 or s != int(s) for s in size):
            raise WncError(f"--image-size {a.image_size!r} is not H,W", "e.g. --image-size 224,224")
        return int(size[0]), int(size[1])
    if len(dims) != 4 or dims[2] is None or dims[3] is None:
        raise WncError("the model input has no static height and width for image folders", "pass --image-size H,W")
    return dims[2], dims[3]


def _data(path: str, a: argparse.Namespace, spec: ModelSpec, classes: list[str] | None = None) -> Any:
    """An .npz or an image folder; with --teacher, unlabelled ones too (model inputs alone, any
    folder of images)."""
    p = Path(path)
    if p.is_dir():
        dims = spec.input_dims
        if len(spec.inputs) != 1 or len(dims) != 4 or dims[1] is None:
            raise WncError(
                f"image folder {p} needs a model with one input of shape (N, C, H, W) with static C",
                "pass the data as an .npz file, one array per model input",
            )
        args = (p, _image_size(a, dims), dims[1], parse_floats(a.mean, "--mean"), parse_floats(a.std, "--std"))
        if a.teacher and not any(d.is_dir() and visible(d) for d in p.iterdir()):
            return UnlabeledImages(*args)
        return load_image_folder(*args, classes)
    return load_inputs_npz(p, [port.name for port in spec.inputs])


def _side_paths(a: argparse.Namespace, out: Path) -> tuple[Path, Path | None, Path]:
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    history = Path(a.history) if a.history else out.with_name(stem + ".history.json")

    plot = Path(a.plot) if a.plot else (out.with_name(stem + ".curve.png") if available() else None)
    ckpt = Path(a.checkpoint_dir) if a.checkpoint_dir else out.with_name(out.name + ".ckpt")
    for path in (history, plot):
        if path is not None:
            check_output_path(a.input, path)
    return history, plot, ckpt


def _pq(a: argparse.Namespace) -> dict[str, Any]:
    if a.pq_lambda is None:
        return {}
    if a.pq_kmeans == "faiss":
        require_faiss()
    return pq_options(a)


def run(a: argparse.Namespace) -> int:
    out = check_output_path(a.input, a.output)
    history_path, plot_path, ckpt = _side_paths(a, out)
    if a.plot:
        pyplot()  # a missing matplotlib fails now, not after training
    cfg = FinetuneConfig(
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        optimizer=a.optimizer,
        loss=a.loss,
        lr_step=a.lr_step,
        lr_gamma=a.lr_gamma,
        seed=a.seed,
        threads=a.threads,
        pq_lambda=a.pq_lambda,
        pq=_pq(a),
        backend=a.backend or ("torch" if a.teacher else "ort"),
        device=a.device,
        temperature=a.temperature,
        alpha=a.alpha,
        features=_features(a.features),
        feature_weight=a.feature_weight,
        distill_losses=parse_overrides(a.distill_loss, "--distill-loss"),
        output_weights={k: _weight(v) for k, v in parse_overrides(a.output_weight, "--output-weight").items()},
        augment=tuple(k.strip() for k in a.augment.split(",") if k.strip()),
    )
    dist = processes(cfg)
    if cfg.backend == "ort":
        require_training()
    else:
        require_torch()
    if a.resume and not ckpt.is_dir():
        raise WncError(f"no checkpoint folder {ckpt} to resume from", "run without --resume, or pass --checkpoint-dir")
    model = load_model(a.input)
    external_data.load_inline(model)
    _float_input(model, a)
    teacher = load_teacher(a.teacher) if a.teacher else None
    spec = model_spec(model, None)
    train = _data(a.train, a, spec)
    val = _data(a.val, a, spec, getattr(train, "classes", None)) if a.val else None
    reference = None
    if a.reference or (teacher is not None and getattr(val, "labeled", False)):
        if val is None:
            raise WncError("--reference is scored on the validation data", "pass --val too")
        ref_model = load_model(a.reference) if a.reference else teacher
        assert ref_model is not None
        external_data.load_inline(ref_model)
        reference = evaluate(ref_model, val, cfg.loss, cfg.batch_size).get("accuracy")
    try:
        tuned, history = finetune(
            model,
            train,
            val,
            cfg,
            teacher=teacher,
            checkpoint_dir=ckpt,
            resume=a.resume,
            reference_accuracy=reference,
            quiet=a.quiet or not dist.main,
        )
    except FinetuneInterrupted as stop:
        if not dist.main:
            return EXIT_INTERRUPTED
        print(
            f"wnc-onnx: {stop}; nothing else written; resume: add --resume"
            + (f" --checkpoint-dir {ckpt}" if a.checkpoint_dir else ""),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not dist.main:  # rank 0 scores and writes for all processes
        return 0
    if val is not None:  # score the exported inference model itself, with plain inference
        labeled = getattr(val, "labeled", True)
        if labeled:
            history.final = evaluate(tuned, val, cfg.loss, cfg.batch_size)
        if teacher is not None:
            history.final |= against_teacher(tuned, teacher, val, cfg.batch_size)
    parent, tuned_float = None, tuned
    if a.int8:  # quantized before any file is written: writing may point the weights at external data
        parent = float_parent_path(out)
        tuned = _quantized(tuned, train, spec, history)
        if val is not None and getattr(val, "labeled", True):
            history.final = evaluate(tuned, val, cfg.loss, cfg.batch_size)
        if val is not None and teacher is not None:
            history.final |= against_teacher(tuned, teacher, val, cfg.batch_size)
    with staged_model(tuned, out, a.external_data) as stage:
        if parent is not None:  # inside the stage: a failed parent leaves no output either
            with staged_model(tuned_float, parent, a.external_data):
                pass
    write_text_atomic(history_path, json.dumps(history.to_dict(), indent=1) + "\n")
    if plot_path is not None:
        plot_history(history, plot_path)
    print(json.dumps(history.to_dict(), indent=1) if a.json else history.to_table())
    if history.final and not a.json:
        score = ", ".join(
            f"{k} {v:.2%}" if k in ("accuracy", "agreement") else f"{k} {v:.4g}" for k, v in history.final.items()
        )
        print(f"written model, scored on --val by plain onnxruntime: {score}")
    written = [str(out), *([str(stage.data_path)] if stage.data_path else []), str(history_path)]
    written += [str(plot_path)] if plot_path is not None else []
    written += [str(parent)] if parent is not None else []
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    if not a.checkpoint_dir:
        shutil.rmtree(ckpt, ignore_errors=True)
    return 0


def _float_input(model: Any, a: argparse.Namespace) -> None:
    """Training needs float weights: a quantized input is refused, with the way to its float parent."""
    found = quantized_nodes(model)
    if found:
        raise WncError(
            f"{a.input} is quantized (it holds {', '.join(found[:3])}): its int8 weights cannot be trained",
            f"fine-tune its float parent ({Path(a.input).stem}.float.onnx, which compress --int8 writes beside it) "
            "and add --int8 to quantize the result again",
        )
    if a.int8:
        tools()  # no quantization tools: said before training, not after
        check_parent_path(a.input, a.output)


def _quantized(tuned: Any, train: Any, spec: ModelSpec, history: Any) -> Any:
    """The tuned model in int8, calibrated on the first INT8_SAMPLES training inputs."""
    feeds = first_samples(batch for batch, _ in BatchSource(train, spec, 16, shuffle=False, label="--train").epoch(0))
    n = samples_in(feeds)
    q = quantize(tuned, feeds)
    history.int8 = {"mode": "static", "format": "QDQ", "samples": n, "int8_layers": count_quantized(q)}
    print(
        f"int8: {history.int8['int8_layers']} layer(s) quantized (static QDQ on {n} training inputs)", file=sys.stderr
    )
    return q


def _features(text: str) -> str | tuple[str, ...]:
    return text if text in ("auto", "none") else tuple(n.strip() for n in text.split(",") if n.strip())


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WncError(f"--output-weight {text!r} is not a number", "write e.g. --output-weight boxes=2") from None
    if not value >= 0:
        raise WncError(f"--output-weight {text!r} must be >= 0", "write e.g. --output-weight boxes=2")
    return value
