"""The model commands: extract the backbone features, run a round, train a classifier, rescore.

Registered on the root group by annotator.cli. torch and the pipeline are imported inside the commands.
"""
from __future__ import annotations

from pathlib import Path

import click

from .common import open_store, round_config
from ..progress import TqdmReport
from ..round_config import DECODERS, METHODS


@click.command()
@click.option("--weights", type=click.Path(dir_okay=False), help="local ImageNet weights (.pth) for a new backbone")
@click.option("--new-backbone", is_flag=True,
              help="build a new backbone (from --weights, else the round setting) even if the project has one")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="images per forward pass [default: 256 on a GPU, 32 on a CPU]")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes decoding images, per process")
@click.option("--decode", type=click.Choice(DECODERS), help="where JPEGs are decoded (default: the round setting)")
@click.option("--flush-every", type=click.IntRange(min=1), default=None,
              help="images per cache shard: a killed run loses at most this many per process [default: 16384]")
@click.pass_context
def extract(ctx, weights, new_backbone, batch_size, workers, decode, flush_every) -> None:
    """Compute the backbone features of every image not in the feature cache yet.

    The project's backbone is kept once it exists: the current model's scores depend on its features. The
    first extract builds one from ImageNet weights (--weights, else the installed Lite0 package or the torch
    cache), else trains it on the noisy labels. --new-backbone replaces it; run `train` afterwards. Runs alone
    or as one rank of torchrun: each rank extracts its share on its own GPU (or CPU) into the shared cache,
    and a rerun after a crash extracts only what is still missing (README, "Many GPUs, many machines").

    Example: annotator extract --weights resnet50.pth
    Example: torchrun --standalone --nproc-per-node=4 -m annotator extract
    """
    from tqdm import tqdm

    from .. import artifacts, distributed
    store = open_store(ctx)
    stored = artifacts.current_backbone(store)
    if weights and stored and not new_backbone:
        raise click.ClickException(f"this project already has a backbone ({stored.source}); its features are "
                                   f"kept. To build a new one from {weights}, add --new-backbone and then run "
                                   "`train` (the current model's scores belong to the old features).")
    cfg = round_config(store, weights_path=weights, decode=decode)
    if store.images_count(status="ok") == 0:
        raise click.ClickException("no images: ingest some first")
    rank = distributed.world_from_env()[0]
    bars = TqdmReport() if rank == 0 else (lambda *a: None)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or tqdm(total=total, desc="features", unit="img")
        bar.update(done - bar.n)

    try:
        t = distributed.extract(store, cfg, new_backbone=new_backbone, report=bars, batch_size=batch_size,
                                num_workers=workers, flush_rows=flush_every, progress=progress)
    except (OSError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        for b in (bars, bar):
            getattr(b, "close", lambda: None)()
    if rank == 0:
        click.echo(f"backbone: {t.backbone}; features at {t.image_size} px")
        bad = f"; {t.failed} images could not be read (listed on the Admin page)" if t.failed else ""
        click.echo(f"{t.images} images, feature vectors of size {t.dim} (backbone: {t.backbone}): "
                   f"{t.cached_before} were cached, {t.extracted} extracted by {t.world} process(es){bad}")


@click.command()
@click.option("--full", is_flag=True, help="also retrain the backbone with w_soft weights first")
@click.option("--steps", type=int, help="CleanNet training steps (method paper)")
@click.option("--method", type=click.Choice(list(METHODS)),
              help="scoring method for this round (default: the stored round setting, else robust)")
@click.pass_context
def train(ctx, full, steps, method) -> None:
    """Run one round now: features, references, the scoring model, scores; the new model becomes current.

    Example: annotator train --method paper --steps 4000
    """
    from .. import pipeline
    store = open_store(ctx)
    bars = TqdmReport()
    try:
        version = pipeline.run_round(store, round_config(store, steps=steps, method=method), full=full,
                                     report=bars)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    finally:
        bars.close()
    click.echo(f"model version {version} is current")


@click.command()
@click.option("--set", "mode", type=click.Choice(["auto", "on", "off"]),
              help="store when the worker adapts: auto (on a GPU; on a CPU within the budget) | on (also over the "
                   "budget) | off; then exit")
@click.option("--budget", type=click.FloatRange(min=1, max=10_000),
              help="the longest adapted round (minutes, by its estimate) the worker starts on a CPU by itself")
@click.option("--layers", type=click.Choice(["tail", "full"]),
              help="this run: tail (Lite0's last blocks on frozen maps) | full (whole networks)")
@click.option("--epochs", type=click.IntRange(min=1), help="epochs of each cross-fitted whole network (this run)")
@click.pass_context
def adapt(ctx, mode, budget, layers, epochs) -> None:
    """Run an adapted round now: fine-tune the backbone (its last blocks, or whole networks: round setting
    adapt_layers) on the data, cross-fitted, and make it current only if it makes fewer errors than the current
    model on the held-out audit verdicts.

    Example: annotator adapt              (or: annotator adapt --set on --budget 30)
    """
    from dataclasses import replace

    from cleannet_core.classifier import resolve_device

    from ..adapt_round import estimate_s, run_adapt_round
    from ..artifacts import current_backbone
    from ..round_config import save_round_config
    store = open_store(ctx)
    cfg = round_config(store, adapt_epochs=epochs, adapt_layers=layers)
    if mode or budget:
        cfg = replace(cfg, adapt=mode or cfg.adapt, adapt_budget_min=budget or cfg.adapt_budget_min)
        save_round_config(store, cfg)
        click.echo(f"adapted rounds: {cfg.adapt}, CPU budget {cfg.adapt_budget_min:g} min")
        return
    backbone = current_backbone(store)
    est = estimate_s(store.images_count(status="ok"), cfg, image_size=backbone.image_size if backbone else 128,
                     device=resolve_device(cfg.device))
    if est is not None:
        click.echo(f"about {est / 60:.0f} min on this CPU")
    bars = TqdmReport()
    try:
        outcome = run_adapt_round(store, cfg, report=bars)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    finally:
        bars.close()
    click.echo(outcome.message)


@click.command("train-classifier")
@click.option("--rounds", type=click.IntRange(min=0), default=1, show_default=True,
              help="extra classifier/CleanNet alternations after the first weighted classifier")
@click.option("--weights", "mode", type=click.Choice(["soft", "hard"]), default="soft", show_default=True,
              help="soft: max(0, score); hard: 1[score >= delta]")
@click.option("--epochs", type=click.IntRange(min=1), help="classifier epochs (default: the round's backbone_epochs)")
@click.option("--steps", type=click.IntRange(min=1), help="CleanNet steps per round (default: the round setting)")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="image loader processes")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="checkpoint file (default: <state folder>/classifiers/classifier-<weights>-<time>.pt)")
@click.pass_context
def train_classifier(ctx, rounds, mode, epochs, steps, workers, out) -> None:
    """Train an image classifier on the noisy labels weighted by the model's scores, and export it.

    Alternates classifier -> features -> score (the round setting's method, default robust; paper =
    CleanNet; live verdicts) -> weights -> classifier; the checkpoint
    holds the weights and the class names (load it with cleannet_core.classifier.load_backbone). Per-epoch
    checkpoints in <state folder>/classifiers/resume let a rerun with the same inputs pick up where it stopped.

    Example: annotator train-classifier --rounds 1 --weights soft --epochs 15 --out clf.pt
    """
    from ..weighted_classifier import train_weighted_classifier
    store = open_store(ctx)
    cfg = round_config(store, steps=steps, backbone_epochs=epochs)
    try:
        done = train_weighted_classifier(store, cfg, rounds=rounds, weights=mode, num_workers=workers, out=out,
                                         say=lambda msg: click.echo(f"[train-classifier] {msg}"),
                                         warn=lambda msg: click.echo(f"warning: {msg}", err=True))
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    last = done.last
    click.echo(f"round {last.round}: delta {last.delta:.4f}, mean weight {last.weights.mean():.3f}, "
               f"{(last.score < last.delta).mean():.1%} flagged")
    click.echo(f"classifier ({done.n_classes} classes, {done.image_size}px) written to {done.path}")


@click.command()
@click.pass_context
def score(ctx) -> None:
    """Rescore every image with the current model (e.g. after ingesting more images).

    Example: annotator score
    """
    from .. import pipeline
    store = open_store(ctx)
    bars = TqdmReport()
    try:
        version = pipeline.rescore(store, round_config(store), report=bars)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    finally:
        bars.close()
    click.echo(f"model version {version} is current")
