"""Command line: a thin shell over the Python API (store, ingest, pipeline, worker, export, auth).

    annotator --help                 # installed by `pip install -e .`; `python -m annotator` works too
Every command opens the database given by --db (or $ANNOTATOR_DB, else the per-user data folder, see
``store.user_data_dir``), calls the same function the app and worker call, and turns library errors into a
one-line message and exit 1. Heavy modules (torch, the pipeline, streamlit) are imported inside the commands
that use them, so `status`, `users`, `classes` and `export` start fast (benchmarks/cli_startup.py).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from . import auth
from .progress import TqdmReport, describe_status, project_status
from .round_config import DECODERS, BadRoundConfig, RoundConfig, load_round_config
from .store import Store, StoreError, default_db_path, private_files


def _open(ctx: click.Context) -> Store:
    try:
        return Store(ctx.obj["db"])
    except (StoreError, OSError) as e:
        raise click.ClickException(f"cannot open database {ctx.obj['db']}: {e}") from e


def _round_config(store: Store, **overrides) -> RoundConfig:
    """The stored round settings plus the CLI flags that were given (see round_config.load_round_config)."""
    try:
        return load_round_config(store, **overrides)
    except BadRoundConfig as e:
        raise click.ClickException(f"bad round setting: {e}") from e


@click.group()
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file; its folder holds the runtime state (default: $ANNOTATOR_DB, else "
                   "annotator.db in the per-user data folder, e.g. ~/.local/share/annotator)")
@click.option("-v", "--verbose", is_flag=True, help="log progress details")
@click.pass_context
def cli(ctx: click.Context, db: Path | None, verbose: bool) -> None:
    """Clean wrong labels with CleanNet and a live annotation loop."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    private_files()  # state, features, checkpoints and exports: readable by this user only
    ctx.obj = {"db": db or default_db_path(), "db_given": db is not None}


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the database and the lead 'admin'.

    Example: annotator init
    """
    store = _open(ctx)
    try:
        password = auth.ensure_admin(store)
    except ValueError as e:  # $ANNOTATOR_ADMIN_PASSWORD too short
        raise click.ClickException(f"$ANNOTATOR_ADMIN_PASSWORD: {e}") from e
    click.echo(f"database: {store.path}")
    if password:
        click.echo(f"created lead 'admin' with password: {password}")


@cli.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), help="ROOT/<class>/<image> tree")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="CSV with path,label")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="folder the CSV paths are in")
@click.option("--classes", help="comma-separated allowed class names (others are rejected)")
@click.pass_context
def ingest(ctx, folder, csv_path, root, classes) -> None:
    """Add images from a class-folder tree or a CSV; bad files are counted and reported.

    Example: annotator ingest --csv labels.csv --root images/
    """
    if bool(folder) == bool(csv_path):
        raise click.UsageError("give exactly one of --folder DIR or --csv FILE --root DIR")
    from . import ingest as ingest_mod
    allowed = [c.strip() for c in classes.split(",")] if classes else None
    store = _open(ctx)
    try:
        if folder:
            report = ingest_mod.ingest_folder(store, folder, allowed_classes=allowed)
        else:
            report = ingest_mod.ingest_csv(store, csv_path, root or csv_path.parent, allowed_classes=allowed)
    except (ingest_mod.BadSource, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(report.summary())
    for path, reason in report.errors[:20]:
        click.echo(f"  {reason}: {path}", err=True)
    if len(report.errors) > 20:
        click.echo(f"  ... and {len(report.errors) - 20} more (see the Admin page)", err=True)


@cli.command()
@click.option("--verify", multiple=True, help="choose a class for verification (repeatable)")
@click.option("--unverify", multiple=True, help="stop verifying a class (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def classes(ctx, verify, unverify, as_json) -> None:
    """List classes, or choose which ones annotators verify.

    Example: annotator classes --verify cat --verify dog
    """
    store = _open(ctx)
    try:
        if verify:
            store.set_verify(list(verify), True)
        if unverify:
            store.set_verify(list(unverify), False)
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    rows = store.classes()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for c in rows:
        click.echo(f"{'*' if c['verify'] else ' '} {c['name']}\t{c['n_images']}")


@cli.command()
@click.option("--weights", type=click.Path(dir_okay=False), help="local ImageNet weights (.pth) for a new backbone")
@click.option("--new-backbone", is_flag=True,
              help="build a new backbone (from --weights, else the round setting) even if the project has one")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes decoding images, per process")
@click.option("--decode", type=click.Choice(DECODERS), help="where JPEGs are decoded (default: the round setting)")
@click.option("--flush-every", type=click.IntRange(min=1), default=None,
              help="images per cache shard: a killed run loses at most this many per process [default: 16384]")
@click.pass_context
def extract(ctx, weights, new_backbone, batch_size, workers, decode, flush_every) -> None:
    """Compute the backbone features of every image not in the feature cache yet.

    The project's backbone is kept once it exists: the current model's scores depend on its features. The
    first extract builds one from ImageNet weights (--weights, else the torch cache), else trains it on the
    noisy labels. --new-backbone replaces it; run `train` afterwards. Runs alone or as one rank of torchrun:
    each rank extracts its share on its own GPU (or CPU) into the shared cache, and a rerun after a crash
    extracts only what is still missing (README, "Many GPUs, many machines").

    Example: annotator extract --weights resnet50.pth
    Example: torchrun --standalone --nproc-per-node=4 -m annotator extract
    """
    from tqdm import tqdm

    from . import artifacts, distributed
    store = _open(ctx)
    stored = artifacts.current_backbone(store)
    if weights and stored and not new_backbone:
        raise click.ClickException(f"this project already has a backbone ({stored.source}); its features are "
                                   f"kept. To build a new one from {weights}, add --new-backbone and then run "
                                   "`train` (the current model's scores belong to the old features).")
    cfg = _round_config(store, weights_path=weights, decode=decode)
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


@cli.command()
@click.pass_context
def rescan(ctx) -> None:
    """Find image files changed since ingest (size or mtime differ, then the content hash) and record them.

    Files whose size and mtime match are not read. Changed images get their new hash, so the next round
    extracts their features; missing and broken files are counted and listed on the Admin page.

    Example: annotator rescan
    """
    from .rescan import rescan as run_rescan

    report = run_rescan(_open(ctx), progress=True)
    click.echo(report.summary())
    for path, reason in report.errors[:20]:
        click.echo(f"  {reason}: {path}", err=True)
    if len(report.errors) > 20:
        click.echo(f"  ... and {len(report.errors) - 20} more (see the Admin page)", err=True)


@cli.command()
@click.option("--full", is_flag=True, help="also retrain the backbone with w_soft weights first")
@click.option("--steps", type=int, help="CleanNet training steps (method paper)")
@click.option("--method", type=click.Choice(["transfer", "paper"]),
              help="scoring method for this round (default: the stored round setting, else transfer)")
@click.pass_context
def train(ctx, full, steps, method) -> None:
    """Run one round now: features, references, the scoring model, scores; the new model becomes current.

    Example: annotator train --method paper --steps 4000
    """
    from . import pipeline
    store = _open(ctx)
    bars = TqdmReport()
    try:
        version = pipeline.run_round(store, _round_config(store, steps=steps, method=method), full=full,
                                     report=bars)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    finally:
        bars.close()
    click.echo(f"model version {version} is current")


@cli.command("train-classifier")
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

    Alternates classifier -> features -> score (the round setting's method, default transfer; paper =
    CleanNet; live verdicts) -> weights -> classifier; the checkpoint
    holds the weights and the class names (load it with cleannet_core.classifier.load_backbone). Per-epoch
    checkpoints in <state folder>/classifiers/resume let a rerun with the same inputs pick up where it stopped.

    Example: annotator train-classifier --rounds 1 --weights soft --epochs 15 --out clf.pt
    """
    from cleannet_core.alternate import AlternateConfig, train_alternating
    from cleannet_core.features import load_imagenet_weights
    from cleannet_core.train import TrainConfig

    from . import artifacts, pipeline
    store = _open(ctx)
    cfg = _round_config(store, steps=steps, backbone_epochs=epochs)
    data = pipeline.load_data(store)
    if len(data.ids) == 0:
        raise click.ClickException("no images: ingest some first")
    if len(data.class_ids) < 2:
        raise click.ClickException("need at least two classes to train a classifier")
    split = pipeline.verdict_split(store, data)
    n_verdicts, max_verdict = split.n, store.max_verdict_id()
    if n_verdicts == 0:
        click.echo("warning: no live verdicts; CleanNet trains without supervision", err=True)
    size = pipeline.pick_image_size(store, cfg)
    try:
        init_state, message = load_imagenet_weights(cfg.arch, weights_path=cfg.weights_path)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(message)
    acfg = AlternateConfig(
        rounds=rounds, weights=mode, method=cfg.method, num_ref=cfg.num_ref, device=cfg.device,
        classifier=pipeline.classifier_config(cfg, image_size=size, n_images=len(data.ids), num_workers=workers),
        cleannet=TrainConfig.shortened(cfg.steps),
        cache_dir=artifacts.features_dir(store),
        checkpoint_dir=artifacts.classifiers_dir(store) / "resume")  # an interrupted run resumes
    try:
        res = train_alternating(data.paths, data.labels, len(data.class_ids), verified_idx=split.train,
                                verified_ok=split.train_correct, val_idx=split.val, val_ok=split.val_correct,
                                config=acfg, init_state=init_state, progress=True,
                                report=lambda msg: click.echo(f"[train-classifier] {msg}"))
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = artifacts.classifiers_dir(store) / f"classifier-{mode}-{stamp}.pt"
    meta = {"image_size": size, "weights": mode, "method": cfg.method, "rounds": rounds,
            "epochs": cfg.backbone_epochs, "cleannet_steps": cfg.steps, "n_images": len(data.ids),
            "n_verdicts": int(n_verdicts), "max_verdict_id": max_verdict, "class_ids": data.class_ids.tolist(),
            "history": [{k: v for k, v in h.items() if k != "epochs"} for h in res.history]}
    try:
        artifacts.save_classifier_artifact(store, res.model, out, class_names=data.class_names, provenance=meta,
                                           source=f"train-classifier: {cfg.method} score w_{mode}, "
                                                  f"{rounds} extra round(s)")
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e}") from e
    last = res.rounds[-1]
    click.echo(f"round {last.round}: delta {last.delta:.4f}, mean weight {last.weights.mean():.3f}, "
               f"{(last.score < last.delta).mean():.1%} flagged")
    click.echo(f"classifier ({len(data.class_names)} classes, {size}px) written to {out}")


@cli.command()
@click.pass_context
def score(ctx) -> None:
    """Rescore every image with the current model (e.g. after ingesting more images).

    Example: annotator score
    """
    from . import pipeline
    store = _open(ctx)
    bars = TqdmReport()
    try:
        version = pipeline.rescore(store, _round_config(store), report=bars)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    finally:
        bars.close()
    click.echo(f"model version {version} is current")


@cli.command()
@click.option("--once", is_flag=True, help="run one round if one is due, then exit")
@click.option("--poll", type=float, default=2.0, show_default=True, help="seconds between checks")
@click.pass_context
def worker(ctx, once, poll) -> None:
    """Run the background worker (retrains as verdicts arrive).

    Example: annotator worker
    """
    from .worker import run_worker
    logging.getLogger().setLevel(logging.INFO)
    _open(ctx).close()
    try:
        run_worker(ctx.obj["db"], poll=poll, once=once)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV file, - = stdout")
@click.option("--threshold", type=float, help="score threshold (default: the model's delta)")
@click.option("--only-kept", is_flag=True, help="write only the rows to keep")
@click.option("--format", "fmt", type=click.Choice(["full", "train"]), default="full", show_default=True,
              help="full: every column (README); train: path,label,weight of the rows to keep, for a training script")
@click.pass_context
def export(ctx, out, threshold, only_kept, fmt) -> None:
    """Export the cleaned dataset as CSV: final_label applies the human verdicts, then the score.

    Example: annotator export --out train.csv --format train
    """
    from .export import export_csv
    store = _open(ctx)
    if str(out) == "-":
        n = export_csv(store, sys.stdout, threshold=threshold, only_kept=only_kept, fmt=fmt)
    else:
        n = export_csv(store, out, threshold=threshold, only_kept=only_kept, fmt=fmt, progress=True)
    click.echo(f"{n} rows written", err=True)


@cli.group()
def users() -> None:
    """Manage users (annotators and leads)."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["annotator", "lead"]), required=True)
@click.option("--password", help="default: generated and printed once")
@click.pass_context
def users_add(ctx, name, role, password) -> None:
    """Add a user.

    Example: annotator users add alice --role annotator
    """
    store = _open(ctx)
    try:
        pw = auth.add_user(store, name, role, password)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"added {role} {name!r}" + ("" if password else f" with password: {pw}"))


@users.command("list")
@click.pass_context
def users_list(ctx) -> None:
    """List users and roles."""
    for u in _open(ctx).list_users():
        click.echo(f"{u['name']}\t{u['role']}\t{'active' if u['active'] else 'disabled'}")


@users.command("password")
@click.argument("name")
@click.option("--password", help=f"the new password (at least {auth.MIN_PASSWORD} characters); default: generated")
@click.pass_context
def users_password(ctx, name, password) -> None:
    """Set a user's password; every session of the user ends.

    Example: annotator users password alice
    """
    store = _open(ctx)
    user = store.get_user(name)
    if user is None:
        raise click.ClickException(f"unknown user {name!r}")
    try:
        pw = auth.set_password(store, user["name"], password)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"password of {user['name']!r} changed" + ("" if password else f" to: {pw}"))


@users.command("signout")
@click.argument("name")
@click.pass_context
def users_signout(ctx, name) -> None:
    """End every open session of a user (sign out everywhere).

    Example: annotator users signout alice
    """
    store = _open(ctx)
    user = store.get_user(name)
    if user is None:
        raise click.ClickException(f"unknown user {name!r}")
    click.echo(f"ended {store.end_sessions(user['name'])} session(s) of {user['name']!r}")


@cli.command()
@click.argument("image_id", type=int)
@click.argument("verdict", type=click.Choice(["correct", "wrong", "unsure"]))
@click.option("--lead", required=True, help="the lead who decides (an active lead account)")
@click.option("--label", help="the true class (with verdict 'wrong')")
@click.pass_context
def override(ctx, image_id, verdict, lead, label) -> None:
    """Replace an image's verdict as a lead: the old one is voided in the same transaction.

    Example: annotator override 42 wrong --lead admin --label dog
    """
    store = _open(ctx)
    try:
        vid = store.override_verdict(image_id, lead, verdict, corrected_label=label)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"image {image_id}: {verdict} by {lead} (verdict {vid})")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json) -> None:
    """Counts, current model and worker state.

    Example: annotator status --json
    """
    store = _open(ctx)
    out = project_status(store)
    click.echo(json.dumps(out) if as_json else "\n".join(describe_status(out)))



@cli.command()
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def demo(ctx, port) -> None:
    """Start the worker and the app on the bundled demo (what `make run` does).

    The demo's database is <clone>/data/state/annotator.db unless --db is given ($ANNOTATOR_DB is ignored
    here, so the demo never lands in your own project).

    Example: annotator demo
    """
    from .demo import DEMO_DB, run_demo
    run_demo(ctx.obj["db"] if ctx.obj["db_given"] else DEMO_DB, port=port)


@cli.command()
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def serve(ctx, port) -> None:
    """Start the worker and the app on your database; Ctrl+C stops both.

    Example: annotator --db ~/birds/annotator.db serve --port 8502
    """
    from .demo import serve as serve_app
    _open(ctx).close()
    serve_app(ctx.obj["db"], port=port)


def main() -> None:
    cli(prog_name="annotator")
