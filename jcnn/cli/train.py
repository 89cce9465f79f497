"""`jcnn train`: trains a model from `jcnn.models` on a dataset of `jcnn.train.data` with the
step of `jcnn.train.step`; with --out it writes metrics.jsonl and metrics.csv, checkpoints and
plots there, and --resume continues a run from its checkpoint. With --val-fraction a
stratified part of the training set is held out: each epoch is measured on it, best.npz keeps
the epoch of the best validation accuracy, --early-stop can end the run on it, and the test
set is evaluated once, at the end (test.json); without it each epoch is measured on the test
set.

What --out holds is never mixed from two runs nor lost: a new run refuses a directory that
holds another run's files unless --overwrite is given (and then removes them only when it
saves its own first), the options, data and directory are checked before anything is compiled,
and SIGINT or SIGTERM at any phase ends the run with a checkpoint to resume from, or a message
saying that there is none (a second one stops at once)."""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import os
import secrets
import signal
import sys
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import jcnn
from jcnn import models, reference
from jcnn.cli import UsageError, describe, positive
from jcnn.train.atomic import atomic_open, remove_temporaries
from jcnn.train.checkpoint import load_checkpoint, read_config, save_checkpoint
from jcnn.train.data import Dataset, batches, load_dataset
from jcnn.train.parallel import (batch_sharded, check_batch_size, data_mesh, put, replicated,
                                 shard_batch)
from jcnn.train.step import (TrainState, decoupled_weight_decay, evaluate, init_train_state,
                             make_eval_step, make_train_step, random_crops)
from jcnn.train.trained import inference_config

MODELS = models.BY_NAME
OPTIMIZERS = {"sgd": optax.sgd,
              "momentum": functools.partial(optax.sgd, momentum=0.9, nesterov=True),
              "adam": optax.adam,
              "adamw": optax.adamw}
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 3e-3, "adamw": 3e-3}
GRADS = {"manual": jcnn, "autodiff": reference}
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
SCHEDULES = ("exponential", "cosine", "constant")
# --augment: (shift in pixels, flip) per dataset
AUGMENT = {"digits": (1, False), "mnist": (2, False), "fashion-mnist": (2, False),
           "cifar10": (4, True)}
# What a run is: saved in each checkpoint, and what --resume restores.
CONFIG_KEYS = ("data", "model", "batch_size", "optimizer", "lr", "lr_decay", "seed", "dtype",
               "grad", "val_fraction", "schedule", "warmup", "weight_decay", "augment",
               "early_stop")
HORIZON = "schedule_epochs"  # saved beside them: the --epochs a cosine schedule decays over
CHECKPOINT, METRICS, CSV = "checkpoint.npz", "metrics.jsonl", "metrics.csv"
BEST, RESULT = "best.npz", "test.json"  # with --val-fraction
RUN_FILES = (CHECKPOINT, METRICS, CSV, BEST, RESULT)  # --out holds another run if it has one
WRITTEN = (*RUN_FILES, "curves.png", "filters.png")  # every file a run writes
PARTIAL = "interrupted_epoch"  # saved beside the config by a Ctrl-C


def _no_partial() -> dict:
    """An epoch with nothing done before this run: no losses, no seconds."""
    return {"losses": [], "seconds": 0.0}


def _seed(text: str) -> int:
    """An argparse type: an int in [0, 2**32)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {text}")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a number in (0, 1)."""
    value = positive(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be < 1, got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=["digits", "mnist", "fashion-mnist", "cifar10"],
                        default="digits", help="dataset (default: the embedded 8x8 digits)")
    parser.add_argument("--data-dir", help="directory holding the dataset's files")
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet")
    parser.add_argument("--epochs", type=positive(int), default=20,
                        help="train until this many epochs are done (with --resume: in all)")
    parser.add_argument("--batch-size", type=positive(int), default=32,
                        help="global batch, split across every device (a multiple of their count)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--lr", type=positive(float), help="learning rate (default: " + ", ".join(
        f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--lr-decay", type=positive(float), default=0.85,
                        help="exponential schedule: multiply the learning rate by this after "
                             "each epoch; the decay keeps Adam from spiking once the loss is "
                             "near zero")
    parser.add_argument("--schedule", choices=SCHEDULES, default="exponential",
                        help="the learning rate over the epochs: exponential (x --lr-decay per "
                             "epoch), cosine (to 0 at the --epochs the run started with), "
                             "constant")
    parser.add_argument("--warmup", type=positive(float, zero=True), default=0.0,
                        metavar="EPOCHS", help="first raise the learning rate linearly from 0 "
                        "over this many epochs (default 0)")
    parser.add_argument("--weight-decay", type=positive(float, zero=True), default=0.0,
                        metavar="WD", help="decoupled weight decay of the kernels (AdamW's), "
                        "times the learning rate (default 0)")
    parser.add_argument("--augment", action="store_true",
                        help="random shifts (digits, MNIST) or crops of the image padded by 4 and "
                             "left-right flips (CIFAR-10), drawn in the step from its key")
    parser.add_argument("--val-fraction", type=_fraction, metavar="F",
                        help="hold out this fraction of the training set (stratified by label, "
                             "seeded) to measure each epoch on; the test set is then evaluated "
                             "once, at the end")
    parser.add_argument("--early-stop", type=positive(int), metavar="PATIENCE",
                        help="stop when the validation accuracy has not improved for this many "
                             "epochs (needs --val-fraction)")
    parser.add_argument("--seed", type=_seed, default=0, help="seeds the init, shuffling, dropout")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="compute dtype; params stay float32")
    parser.add_argument("--grad", choices=sorted(GRADS), default="manual",
                        help="manual: jcnn's hand-derived rules; "
                             "autodiff: jcnn.reference + jax.grad")
    parser.add_argument("--out", type=Path, help="write metrics.jsonl, metrics.csv, "
                        "checkpoint.npz, curves.png, filters.png (and with --val-fraction "
                        "best.npz and test.json) here")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz "
                        "with its saved config (only --epochs and --data-dir are taken from here)")
    parser.add_argument("--overwrite", action="store_true", help="start a new run in an --out "
                        "that holds another one (its files go when this run saves its own)")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first (Slurm, Open "
                             "MPI and Cloud TPU are detected); run the same command on every host")
    # what each option is when not given, so that --resume can tell which ones were given, and
    # the options themselves, whose types and choices check a saved config
    parser.set_defaults(config_defaults={k: parser.get_default(k) for k in CONFIG_KEYS},
                        config_options={a.dest: a for a in parser._actions
                                        if a.dest in CONFIG_KEYS})


class _Setup(NamedTuple):
    """What a run needs besides its TrainState, built once from the config."""
    config: dict
    data: Any            # its training images are those left after the validation split
    val: Optional[tuple[np.ndarray, np.ndarray]]  # validation images and labels
    mesh: Any
    step: Callable       # compiled train step
    eval_step: Callable  # compiled eval step


def _check_out(args) -> None:
    """Before anything is loaded or compiled: --out is a directory this process can write,
    holding the run to continue (--resume) or no other run (unless --overwrite); temporary
    files that killed writes left there are removed."""
    out = args.out
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    present = [n for n in RUN_FILES if os.path.lexists(out / n)]
    if present and not (args.resume or args.overwrite):
        raise UsageError(f"--out {out} holds another run ({', '.join(present)}); add --resume "
                         f"to continue it or --overwrite to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".jcnn-write-test.{secrets.token_hex(4)}.tmp"
        probe.touch(exist_ok=False)
        probe.unlink()
        remove_temporaries(out, WRITTEN)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write there: {describe(e)}") from e


def _check_saved(config: dict, path: Path, options: dict) -> None:
    """A saved config is checked as its options would be on the command line: a tampered or
    foreign one is refused, naming the key and value, before anything is built from it."""
    for key in CONFIG_KEYS:
        action, value = options[key], config[key]
        try:
            if value is None:
                ok = action.default is None
            elif action.choices is not None:
                ok = value in action.choices
            elif action.type is not None:
                ok = not isinstance(value, bool) and action.type(str(value)) == value
            else:  # a flag
                ok = isinstance(value, bool)
        except (argparse.ArgumentTypeError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: its saved config has {key} = {json.dumps(value)}, which "
                             f"--{key.replace('_', '-')} does not accept")


def _config(args) -> tuple[dict, dict]:
    """The run's config, and what a Ctrl-C'd epoch had done before it was saved (the losses
    of its steps and its seconds), so that the resumed epoch's record covers all of it."""
    if not args.resume:
        config = {k: getattr(args, k) for k in CONFIG_KEYS}
        config[HORIZON] = args.epochs
    else:
        path = args.out / CHECKPOINT
        if not path.is_file():  # a FIFO or a device would hang the read
            raise UsageError(f"--resume needs --out DIR holding {CHECKPOINT}; {path} " + (
                "is not a regular file" if os.path.lexists(path) else "does not exist") + (
                "; the run there stopped before its first checkpoint: start it again with "
                "--overwrite" if os.path.lexists(args.out / METRICS) else ""))
        # options that a later jcnn added are missing from older runs: they take their defaults
        config = {**args.config_defaults, **read_config(path)}
        _check_saved(config, path, args.config_options)
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    if config["early_stop"] is not None and config["val_fraction"] is None:
        raise UsageError("--early-stop watches the validation accuracy: it needs --val-fraction")
    if not args.resume:
        return config, _no_partial()
    defaults = args.config_defaults
    ignored = [k for k in CONFIG_KEYS if getattr(args, k) != defaults[k]
               and getattr(args, k) != config[k]]
    if ignored:
        print("jcnn train: --resume keeps the saved run's " + ", ".join(
            f"--{k.replace('_', '-')} {config[k]} (not {getattr(args, k)})" for k in ignored),
            file=sys.stderr)
    return config, config.pop(PARTIAL, _no_partial())


def _setup(config: dict, data_dir: Optional[str], resume_from: Optional[Path]
           ) -> tuple[_Setup, TrainState, np.ndarray]:
    """Data, mesh, model, compiled steps, the TrainState (fresh or resumed, on the mesh) and
    the initial first-layer kernel (for filters.png; the init is a function of the seed)."""
    data, val = _split(load_dataset(config["data"], data_dir), config["val_fraction"],
                       config["seed"])
    config.update(inference_config(data))  # saved with the checkpoint, for jcnn.load_trained
    if config["batch_size"] > len(data.train_labels):
        raise UsageError(f"--batch-size {config['batch_size']} is more than the "
                         f"{len(data.train_labels)} training images of {data.name}")
    mesh = data_mesh()
    try:
        check_batch_size(config["batch_size"], mesh)
    except ValueError as e:
        raise UsageError(f"--batch-size {config['batch_size']}: {e}") from None
    ops, compute_dtype = GRADS[config["grad"]], DTYPES[config["dtype"]]
    model = MODELS[config["model"]](data.num_classes, ops=ops)
    batch = (config["batch_size"], *data.train_images.shape[1:])
    per_epoch = len(data.train_labels) // batch[0]
    schedule = _schedule(config, per_epoch)
    optimizer = OPTIMIZERS[config["optimizer"]](schedule)
    if config["weight_decay"]:
        optimizer = optax.chain(optimizer, decoupled_weight_decay(config["weight_decay"],
                                                                  schedule))
    ts = init_train_state(model, optimizer, jax.random.key(config["seed"]), batch)
    before = _first_kernel(ts.params)
    if resume_from is not None:
        ts = load_checkpoint(resume_from, like=ts)
    ts = put(ts, replicated(mesh))
    spec = functools.partial(jax.ShapeDtypeStruct, sharding=batch_sharded(mesh))
    x, y = spec(batch, data.train_images.dtype), spec(batch[:1], data.train_labels.dtype)
    step = make_train_step(model, optimizer, ops=ops, compute_dtype=compute_dtype, mesh=mesh,
                           augment=random_crops(*AUGMENT[data.name]) if config["augment"]
                           else None)
    eval_step = make_eval_step(model, ops=ops, compute_dtype=compute_dtype, mesh=mesh)
    mask = spec(batch[:1], np.float32)
    # Compile ahead, so that epoch timings and throughput measure training only.
    return (_Setup(config, data, val, mesh, step.lower(ts, x, y).compile(),
                   eval_step.lower(ts.params, ts.state, x, y, mask).compile()), ts, before)


def _split(data: Dataset, fraction: Optional[float], seed: int
           ) -> tuple[Dataset, Optional[tuple[np.ndarray, np.ndarray]]]:
    """The dataset with `fraction` of each label's training images (chosen with `seed`) moved
    out of it, and those (images, labels) in their original order; no split without one."""
    if fraction is None:
        return data, None
    rng, labels = np.random.default_rng([seed, 0x7A1]), data.train_labels
    held = np.zeros(len(labels), bool)
    for label in range(data.num_classes):
        rows = np.flatnonzero(labels == label)
        held[rng.permutation(rows)[:round(fraction * len(rows))]] = True
    if held.all() or not held.any():
        raise UsageError(f"--val-fraction {fraction:g} leaves " + (
            "no training images" if held.all() else "no validation images") +
            f" of the {len(labels)} of {data.name}")
    return (data._replace(train_images=data.train_images[~held], train_labels=labels[~held]),
            (data.train_images[held], labels[held]))


def _schedule(config: dict, per_epoch: int) -> optax.Schedule:
    """The learning rate at each step: --schedule after a linear --warmup from 0."""
    lr, warmup = config["lr"], round(config["warmup"] * per_epoch)
    schedule = {
        "exponential": lambda: optax.exponential_decay(lr, per_epoch, config["lr_decay"],
                                                       staircase=True),
        "cosine": lambda: optax.cosine_decay_schedule(
            lr, max(1, config.get(HORIZON, 1) * per_epoch - warmup)),
        "constant": lambda: optax.constant_schedule(lr),
    }[config["schedule"]]()
    if not warmup:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])


@contextlib.contextmanager
def _signals_stop_the_run():
    """SIGINT (Ctrl-C) and SIGTERM, from the start of the run, only append their number to the
    list this yields; the run checks it after each step and between its phases, and stops
    where it can save a consistent checkpoint (a signal inside a step could leave donated
    buffers behind, one inside XLA's compiler crashes it). A second signal acts at once, as it
    would without this (SIGINT raises KeyboardInterrupt, SIGTERM ends the process)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        caught.append(signum)
        for s, h in previous.items():
            signal.signal(s, h)
    for s in previous:
        signal.signal(s, handler)
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stopped(caught: list[int], what: str) -> int:
    """Say how a signal stopped the run; its exit code, 128 + the signal's number."""
    name = "interrupted" if caught[0] == signal.SIGINT else "terminated"
    print(f"\njcnn train: {name} ({signal.Signals(caught[0]).name}) {what}", file=sys.stderr)
    return 128 + caught[0]


def _first_kernel(params) -> Optional[np.ndarray]:
    """The first 4-D (HWIO) kernel in layer order (`serial`'s keys sort in layer order)."""
    leaves = jax.tree_util.tree_leaves(params)  # dict keys in sorted order
    return next((np.asarray(a) for a in leaves if np.ndim(a) == 4), None)


def _train_epoch(setup: _Setup, ts: TrainState, epoch: int, epochs: int, interrupted):
    """Steps through what is left of `epoch` (all of it unless resuming mid-epoch).
    Returns (ts, losses, seconds, stop), stop being None, "interrupted" or "nan"."""
    cfg, data = setup.config, setup.data
    per_epoch = len(data.train_labels) // cfg["batch_size"]
    done = int(ts.step) - epoch * per_epoch
    losses, start = [], time.perf_counter()
    bar = tqdm(total=per_epoch, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
               leave=False, disable=None)  # disable=None: no bar unless stderr is a terminal
    train = batches(data.train_images, data.train_labels, cfg["batch_size"], seed=cfg["seed"],
                    epoch=epoch, shuffle=True, remainder="drop")
    with bar:
        for x, y in islice(train, done, None):
            ts, loss = setup.step(ts, *shard_batch((x, y), setup.mesh))
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                return ts, losses, time.perf_counter() - start, "nan"
            rate = len(losses) * cfg["batch_size"] / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update()  # redraws at most every 0.1 s
            if interrupted() and done + len(losses) < per_epoch:  # else: the epoch is saved
                return ts, losses, time.perf_counter() - start, "interrupted"
    return ts, losses, time.perf_counter() - start, None


def _read_records(out: Path) -> list[dict]:
    """The records of OUT/metrics.jsonl; one that is not a whole record (torn by hand or by
    a crash of the filesystem) is refused, naming its line, rather than dropped."""
    path = out / METRICS
    if not os.path.lexists(path):
        return []
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not text ({e.reason} at byte {e.start})") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
            int(records[-1]["step"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {n} is not a whole metrics record: {line[:40]!r}; "
                             f"remove that line to resume") from None
    return records


@contextlib.contextmanager
def _writing(path: Path):
    """An OSError while writing names `path` and says that its previous content is whole
    (every write is atomic)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e}; nothing there was lost (the previous "
                      f"version, if any, is whole)", str(path)) from e


def _save(out: Path, ts: TrainState, config: dict, records: Optional[list[dict]],
          first: bool, best: bool = False) -> None:
    """The metrics (when given: metrics.jsonl and metrics.csv), best.npz (when `best`), then the
    checkpoint. A run that dies before its checkpoint re-runs that epoch on --resume, and its
    first record is dropped then rather than kept twice. The `first` save of a new run
    removes the files of the run it replaces (--overwrite) first, so that a checkpoint and
    metrics never come from two runs."""
    for name in RUN_FILES if first else ():
        with _writing(out / name):
            (out / name).unlink(missing_ok=True)
    if records is not None:
        with _writing(out / METRICS), atomic_open(out / METRICS) as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        columns = list(dict.fromkeys(k for r in records for k in r))
        with _writing(out / CSV), atomic_open(out / CSV) as f:
            writer = csv.DictWriter(f, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
    for name in (BEST, CHECKPOINT) if best else (CHECKPOINT,):
        with _writing(out / name):
            save_checkpoint(out / name, ts, config)


def _best(records: list[dict]) -> Optional[dict]:
    """The record of the best validation accuracy (the first of equals), if any."""
    scored = [r for r in records if "val_accuracy" in r]
    return max(scored, key=lambda r: r["val_accuracy"]) if scored else None


def _write_outputs(out: Path, records: list[dict], before: np.ndarray,
                   after: np.ndarray) -> None:
    """curves.png from every record (resumed runs included) and filters.png."""
    from jcnn.train import plots  # only now: matplotlib is slow to import and needed only here
    plots.plot_curves(records, out / "curves.png")
    if before is not None:
        plots.plot_filters(before, after, out / "filters.png")


def run(args) -> int:
    with _signals_stop_the_run() as caught:
        return _run(args, caught)


def _run(args, caught: list[int]) -> int:
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it: give one")
    if (args.resume or args.overwrite) and args.out is None:
        raise UsageError(f"--{'resume' if args.resume else 'overwrite'} needs --out DIR")
    if args.distributed:
        try:
            jax.distributed.initialize()  # before anything touches a device
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"--distributed: jax.distributed.initialize() found no cluster "
                             f"({describe(e)}); run it under Slurm, Open MPI or on Cloud TPU, "
                             f"or leave --distributed out on one host") from e
    out = args.out if jax.process_index() == 0 else None  # one process writes the files
    if out is not None:
        _check_out(args)
    config, partial = _config(args)
    records = _read_records(out) if out is not None and args.resume else []
    resume_from = args.out / CHECKPOINT if args.resume else None
    saved = args.resume  # whether out/checkpoint.npz is this run's (or the one it continues)
    start = time.perf_counter()
    setup, ts, before = _setup(config, args.data_dir, resume_from)
    if caught:
        return _stopped(caught, "before training began; " + (
            f"{args.out / CHECKPOINT} is as it was" if args.resume else "nothing was saved"))
    data, val, bs = setup.data, setup.val, config["batch_size"]
    records = [r for r in records if r["step"] <= int(ts.step)]
    # the best epoch's params and state (with --val-fraction), on the host
    best = (load_checkpoint(args.out / BEST, like=ts)[:2]
            if _best(records) and (args.out / BEST).is_file() else None)
    measured, on = (val, "val") if val else ((data.test_images, data.test_labels), "test")
    schedule = {"exponential": f"x{config['lr_decay']:g} per epoch"}.get(
        config["schedule"], config["schedule"])
    print(f"jcnn train: {config['model']} on {data.name} ({len(data.train_labels)} train, "
          + (f"{len(val[1])} val, " if val else "") + f"{len(data.test_labels)} test), "
          f"{config['optimizer']} lr {config['lr']:g} ({schedule}"
          + (f", {config['warmup']:g} warmup epochs" if config["warmup"] else "")
          + (f", weight decay {config['weight_decay']:g}" if config["weight_decay"] else "")
          + f"), batch {bs}{' augmented' if config['augment'] else ''} "
          f"on {setup.mesh.size} {jax.devices()[0].platform} device(s), {config['dtype']}, "
          f"{config['grad']} gradients; step {int(ts.step)}, ready in "
          f"{time.perf_counter() - start:.1f}s", flush=True)

    test = None
    for epoch in range(int(ts.step) // (len(data.train_labels) // bs), args.epochs):
        patience, top = config["early_stop"], _best(records)
        if patience and top and records[-1]["epoch"] - top["epoch"] >= patience:
            print(f"early stop: {on}_accuracy has not improved for {patience} epochs since "
                  f"epoch {top['epoch']} ({top['val_accuracy']:.2%})", flush=True)
            break
        ts, losses, seconds, stop = _train_epoch(setup, ts, epoch, args.epochs,
                                                 lambda: bool(caught))
        losses, seconds = partial["losses"] + losses, partial["seconds"] + seconds
        partial = _no_partial()
        if stop == "nan":
            last = out / CHECKPOINT if out and saved else None
            print(f"jcnn train: the loss is {losses[-1]} at step {int(ts.step)} (epoch "
                  f"{epoch + 1}); stopping. Last good checkpoint: "
                  f"{last or 'none (no epoch finished)'}. Try a lower --lr.", file=sys.stderr)
            return 1
        if stop == "interrupted":
            if out is not None:
                _save(out, ts, {**config, PARTIAL: {"losses": losses, "seconds": seconds}},
                      None, first=not saved)
            return _stopped(caught, f"at step {int(ts.step)}" + (
                f"; saved {out / CHECKPOINT}, continue with --resume" if out else ""))
        eval_start = time.perf_counter()
        test = evaluate(setup.eval_step, ts.params, ts.state, *measured, bs, setup.mesh)
        record = {"epoch": epoch + 1, "step": int(ts.step),
                  "train_loss": float(np.mean(losses)), f"{on}_loss": test[0],
                  f"{on}_accuracy": test[1],
                  "seconds": seconds + time.perf_counter() - eval_start,
                  "images_per_second": len(losses) * bs / seconds}
        print(f"epoch {epoch + 1:3d}/{args.epochs}  train_loss {record['train_loss']:.4f}  "
              f"{on}_loss {test[0]:.4f}  {on}_accuracy {test[1]:.2%}  "
              f"{record['seconds']:.1f}s  {record['images_per_second']:.0f} img/s", flush=True)
        records.append(record)
        improved = val is not None and _best(records) is record
        if improved:
            best = jax.device_get((ts.params, ts.state))
        if out is not None:
            _save(out, ts, config, records, first=not saved, best=improved)
            saved = True
        if caught and epoch + 1 < args.epochs:
            return _stopped(caught, f"after epoch {epoch + 1}" + (
                f"; saved {out / CHECKPOINT}, continue with --resume" if out else ""))
    test = _final_test(setup, ts, best or (None, None), records, out) if val and records else test
    if test is None:  # resumed a run that had already reached --epochs
        test = evaluate(setup.eval_step, ts.params, ts.state, data.test_images, data.test_labels,
                        bs, setup.mesh)
    print(f"test accuracy {test[1]:.2%} ({round(test[1] * len(data.test_labels))}/"
          f"{len(data.test_labels)}), {time.perf_counter() - start:.1f}s in all")
    if out is not None and not caught:
        with _writing(out):
            _write_outputs(out, records, before, _first_kernel(ts.params))
    if caught:
        return _stopped(caught, "after the last epoch" + (
            f"; {out} holds the finished run (--resume draws its plots)" if out else ""))
    if out is not None:
        print("jcnn train: wrote " + ", ".join(str(out / n) for n in WRITTEN
                                                if (out / n).is_file()))
    return 0


def _final_test(setup: _Setup, ts: TrainState, best, records: list[dict],
                out: Optional[Path]) -> tuple[float, float]:
    """With --val-fraction: the test set, evaluated once, at the end, on the last epoch's
    params and on the best epoch's; printed, and written to test.json. Returns the last's."""
    data, top = setup.data, _best(records)
    results = {}
    for name, (params, state), record in (("last", ts[:2], records[-1]), ("best", best, top)):
        if params is None:  # best.npz was removed by hand
            continue
        loss, accuracy = evaluate(setup.eval_step, params, state, data.test_images,
                                  data.test_labels, setup.config["batch_size"], setup.mesh)
        results[name] = {"epoch": record["epoch"], "step": record["step"],
                         "val_accuracy": record["val_accuracy"], "test_loss": loss,
                         "test_accuracy": accuracy}
    if "best" in results:
        print(f"best epoch {top['epoch']} (val_accuracy {top['val_accuracy']:.2%}): test "
              f"accuracy {results['best']['test_accuracy']:.2%}", flush=True)
    if out is not None:
        with _writing(out / RESULT), atomic_open(out / RESULT) as f:
            f.write(json.dumps(results, indent=1) + "\n")
    return results["last"]["test_loss"], results["last"]["test_accuracy"]
