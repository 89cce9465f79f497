"""`jcnn train`: trains a model from `jcnn.models` on a dataset of `jcnn.train.data` with the
step of `jcnn.train.step`; with --out it writes metrics.jsonl, checkpoints and plots there,
and --resume continues a run from its checkpoint."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
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
from jcnn.cli import option_checks
from jcnn.train.atomic import atomic_open
from jcnn.train.checkpoint import load_checkpoint, read_config, save_checkpoint
from jcnn.train.data import batches, load_dataset
from jcnn.train.parallel import (batch_sharded, check_batch_size, data_mesh, put, replicated,
                                 shard_batch)
from jcnn.train.step import TrainState, evaluate, init_train_state, make_eval_step, make_train_step
from jcnn.train.trained import inference_config

MODELS = models.BY_NAME
OPTIMIZERS = {"sgd": optax.sgd,
              "momentum": functools.partial(optax.sgd, momentum=0.9, nesterov=True),
              "adam": optax.adam,
              "adamw": optax.adamw}
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 3e-3, "adamw": 3e-3}
GRADS = {"manual": jcnn, "autodiff": reference}
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
# What a run is: saved in each checkpoint, and what --resume restores.
CONFIG_KEYS = ("data", "model", "batch_size", "optimizer", "lr", "lr_decay", "seed", "dtype",
               "grad")
CHECKPOINT, METRICS = "checkpoint.npz", "metrics.jsonl"
PARTIAL = "interrupted_epoch"  # saved beside the config by a Ctrl-C


def _no_partial() -> dict:
    """An epoch with nothing done before this run: no losses, no seconds."""
    return {"losses": [], "seconds": 0.0}


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a finite number > 0 of `kind`, else a usage error naming the value."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=["digits", "mnist", "fashion-mnist", "cifar10"],
                        default="digits", help="dataset (default: the embedded 8x8 digits)")
    parser.add_argument("--data-dir", help="directory holding the dataset's files")
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet")
    parser.add_argument("--epochs", type=_positive(int), default=20,
                        help="train until this many epochs are done (with --resume: in all)")
    parser.add_argument("--batch-size", type=_positive(int), default=32,
                        help="global batch, split across every device (a multiple of their count)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--lr", type=_positive(float), help="learning rate (default: " + ", ".join(
        f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--lr-decay", type=_positive(float), default=0.85,
                        help="multiply the learning rate by this after each epoch (1: constant); "
                             "the decay keeps Adam from spiking once the loss is near zero")
    parser.add_argument("--seed", type=int, default=0, help="seeds the init, shuffling, dropout")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="compute dtype; params stay float32")
    parser.add_argument("--grad", choices=sorted(GRADS), default="manual",
                        help="manual: jcnn's hand-derived rules; "
                             "autodiff: jcnn.reference + jax.grad")
    parser.add_argument("--out", type=Path, help="write metrics.jsonl, checkpoint.npz, "
                        "curves.png and filters.png here")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz "
                        "with its saved config (only --epochs and --data-dir are taken from here)")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: call jax.distributed.initialize() first (Slurm, Open "
                             "MPI and Cloud TPU are detected); run the same command on every host")
    # what each option is when not given, so that --resume can tell which ones were given
    parser.set_defaults(config_defaults={k: parser.get_default(k) for k in CONFIG_KEYS},
                        config_checks=option_checks(parser, CONFIG_KEYS))


class _Setup(NamedTuple):
    """What a run needs besides its TrainState, built once from the config."""
    config: dict
    data: Any
    mesh: Any
    step: Callable       # compiled train step
    eval_step: Callable  # compiled eval step


def _config(args) -> tuple[dict, dict]:
    """The run's config, and what a Ctrl-C'd epoch had done before it was saved (the losses
    of its steps and its seconds), so that the resumed epoch's record covers all of it."""
    if not args.resume:
        config = {k: getattr(args, k) for k in CONFIG_KEYS}
        config["lr"] = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
        return config, _no_partial()
    if args.out is None or not (args.out / CHECKPOINT).exists():
        raise SystemExit(f"jcnn train: --resume needs --out DIR holding {CHECKPOINT}")
    config = read_config(args.out / CHECKPOINT, required=args.config_checks)
    defaults = getattr(args, "config_defaults", {})
    ignored = [k for k in CONFIG_KEYS if k in defaults and getattr(args, k) != defaults[k]
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
    data = load_dataset(config["data"], data_dir)
    config.update(inference_config(data))  # saved with the checkpoint, for jcnn.load_trained
    if config["batch_size"] > len(data.train_labels):
        raise SystemExit(f"jcnn train: --batch-size {config['batch_size']} is more than the "
                         f"{len(data.train_labels)} training images of {data.name}")
    mesh = data_mesh()
    try:
        check_batch_size(config["batch_size"], mesh)
    except ValueError as e:
        raise SystemExit(f"jcnn train: --batch-size {config['batch_size']}: {e}") from None
    ops, compute_dtype = GRADS[config["grad"]], DTYPES[config["dtype"]]
    model = MODELS[config["model"]](data.num_classes, ops=ops)
    batch = (config["batch_size"], *data.train_images.shape[1:])
    per_epoch = len(data.train_labels) // batch[0]
    optimizer = OPTIMIZERS[config["optimizer"]](optax.exponential_decay(
        config["lr"], per_epoch, config["lr_decay"], staircase=True))
    ts = init_train_state(model, optimizer, jax.random.key(config["seed"]), batch)
    before = _first_kernel(ts.params)
    if resume_from is not None:
        ts = load_checkpoint(resume_from, like=ts)
    ts = put(ts, replicated(mesh))
    spec = functools.partial(jax.ShapeDtypeStruct, sharding=batch_sharded(mesh))
    x, y = spec(batch, data.train_images.dtype), spec(batch[:1], data.train_labels.dtype)
    step = make_train_step(model, optimizer, ops=ops, compute_dtype=compute_dtype, mesh=mesh)
    eval_step = make_eval_step(model, ops=ops, compute_dtype=compute_dtype, mesh=mesh)
    mask = spec(batch[:1], np.float32)
    # Compile ahead, so that epoch timings and throughput measure training only.
    return (_Setup(config, data, mesh, step.lower(ts, x, y).compile(),
                   eval_step.lower(ts.params, ts.state, x, y, mask).compile()), ts, before)


@contextlib.contextmanager
def _ctrl_c_stops_between_steps():
    """The first Ctrl-C only raises a flag that the loop checks after each step, so it can save
    a consistent checkpoint (an interrupt inside a step could leave donated buffers behind);
    a second Ctrl-C interrupts at once."""
    hits = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        hits.append(signum)
        signal.signal(signal.SIGINT, previous)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


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
            if interrupted():
                return ts, losses, time.perf_counter() - start, "interrupted"
    return ts, losses, time.perf_counter() - start, None


def _records_until(out: Path, step: int) -> list[dict]:
    """The metrics.jsonl records of the run being resumed at `step`, those up to it. Each epoch
    writes its record, then its checkpoint: a run that died between the two re-runs the epoch,
    and its first record is dropped here rather than kept twice."""
    path = out / METRICS
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["step"] <= step]


def _write_outputs(out: Path, records: list[dict], before: np.ndarray,
                   after: np.ndarray) -> None:
    """curves.png from every record (resumed runs included) and filters.png."""
    from jcnn.train import plots  # only now: matplotlib is slow to import and needed only here
    plots.plot_curves(records, out / "curves.png")
    if before is not None:
        plots.plot_filters(before, after, out / "filters.png")


def run(args) -> int:
    if args.distributed:
        jax.distributed.initialize()  # before anything touches a device
    config, partial = _config(args)
    resume_from = args.out / CHECKPOINT if args.resume else None
    out = args.out if jax.process_index() == 0 else None  # one process writes the files
    if out is not None:  # an earlier run's files there stay until this run replaces them
        out.mkdir(parents=True, exist_ok=True)
    saved = args.resume  # whether out/checkpoint.npz is this run's (or the one it continues)
    start = time.perf_counter()
    setup, ts, before = _setup(config, args.data_dir, resume_from)
    data, bs = setup.data, config["batch_size"]
    records = _records_until(out, int(ts.step)) if out is not None else []
    print(f"jcnn train: {config['model']} on {data.name} ({len(data.train_labels)} train, "
          f"{len(data.test_labels)} test), {config['optimizer']} lr {config['lr']:g} "
          f"(x{config['lr_decay']:g} per epoch), batch {bs} "
          f"on {setup.mesh.size} {jax.devices()[0].platform} device(s), {config['dtype']}, "
          f"{config['grad']} gradients; step {int(ts.step)}, ready in "
          f"{time.perf_counter() - start:.1f}s", flush=True)

    test = None
    with _ctrl_c_stops_between_steps() as interrupted:
        for epoch in range(int(ts.step) // (len(data.train_labels) // bs), args.epochs):
            ts, losses, seconds, stop = _train_epoch(setup, ts, epoch, args.epochs, interrupted)
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
                    save_checkpoint(out / CHECKPOINT, ts,
                                    {**config, PARTIAL: {"losses": losses, "seconds": seconds}})
                print(f"\njcnn train: interrupted at step {int(ts.step)}" + (
                    f"; saved {out / CHECKPOINT}, continue with --resume" if out else ""),
                    file=sys.stderr)
                return 130
            eval_start = time.perf_counter()
            test = evaluate(setup.eval_step, ts.params, ts.state, data.test_images,
                            data.test_labels, bs, setup.mesh)
            record = {"epoch": epoch + 1, "step": int(ts.step),
                      "train_loss": float(np.mean(losses)), "test_loss": test[0],
                      "test_accuracy": test[1],
                      "seconds": seconds + time.perf_counter() - eval_start,
                      "images_per_second": len(losses) * bs / seconds}
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train_loss {record['train_loss']:.4f}  "
                  f"test_loss {test[0]:.4f}  test_accuracy {test[1]:.2%}  "
                  f"{record['seconds']:.1f}s  {record['images_per_second']:.0f} img/s", flush=True)
            records.append(record)
            if out is not None:
                with atomic_open(out / METRICS) as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
                save_checkpoint(out / CHECKPOINT, ts, config)
                saved = True
    if test is None:  # resumed a run that had already reached --epochs
        test = evaluate(setup.eval_step, ts.params, ts.state, data.test_images, data.test_labels,
                        bs, setup.mesh)
    print(f"test accuracy {test[1]:.2%} ({round(test[1] * len(data.test_labels))}/"
          f"{len(data.test_labels)}), {time.perf_counter() - start:.1f}s in all")
    if out is not None:
        _write_outputs(out, records, before, _first_kernel(ts.params))
    return 0
