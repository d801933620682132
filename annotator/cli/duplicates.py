"""`annotator duplicates`: near-duplicate groups (label conflicts first) and the most outlying images.

Registered on the root group by annotator.cli. torch and the pipeline are imported inside the command.
"""
from __future__ import annotations

import json

import click

from .common import open_store, round_config
from ..store import StoreError


@click.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object: the run, the groups, the outliers")
@click.option("--class", "class_name", help="only groups with a member of this class, and outliers of it")
@click.option("--conflicts", is_flag=True, help="only groups whose members carry different labels")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="groups shown")
@click.option("--outliers", type=click.IntRange(min=0), default=20, show_default=True,
              help="most outlying images shown")
@click.option("--recompute", is_flag=True, help="compute again even when nothing changed")
@click.pass_context
def duplicates(ctx, as_json, class_name, conflicts, limit, outliers, recompute) -> None:
    """Near-duplicate groups (same content hash or similar features) and outliers, computed when stale.

    A group whose members carry different labels is a label conflict (listed first). Outlier score: higher =
    further from every class. Features come from the cache (missing ones are extracted first).

    Example: annotator duplicates --conflicts --class cat
    Example: annotator duplicates --json > groups.json
    """
    from tqdm import tqdm

    from ..duplicates import groups, refresh
    from ..progress import TqdmReport
    store = open_store(ctx)
    try:
        class_id = store.class_id(class_name) if class_name else None
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    rounds, bar = TqdmReport(), tqdm(total=100, desc="duplicates", unit="%", disable=as_json, leave=False)

    said: list[str] = []

    def report(phase: str, progress: float, message: str) -> None:
        if as_json:  # stdout is the JSON: progress lines go to stderr
            if message and message not in said[-1:]:
                said.append(message)
                click.echo(f"[{phase}] {message}", err=True)
        elif phase != "duplicates":
            rounds(phase, progress, message)
        else:
            bar.set_postfix_str(message[:60], refresh=False)
            bar.update(max(0, int(round(100 * min(progress, 1.0))) - bar.n))

    try:
        run = refresh(store, round_config(store), force=recompute, progress=not as_json, report=report)
    except (OSError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        rounds.close()
        bar.close()
    found = groups(store, class_id=class_id, conflicts_only=conflicts, limit=limit)
    top = store.top_outliers(class_id=class_id, limit=outliers) if outliers else []
    click.echo(_as_json(run, found, top) if as_json else _as_text(run, found, top))


def _as_json(run: dict, found: list[dict], top: list[dict]) -> str:
    """One JSON object: the run's figures, the groups (members without their hashes), the outliers."""
    for g in found:
        for m in g["members"]:
            m.pop("hash")
    return json.dumps({"run": {k: run[k] for k in ("threshold", "method", "n_images", "n_groups", "n_conflicts",
                                                   "created_at", "seconds")},
                       "groups": found,
                       "outliers": [{"id": o["image_id"], "path": o["path"], "label": o["label"],
                                     "outlier_score": o["outlier_score"], "group": o["group_id"]} for o in top]})


def _as_text(run: dict, found: list[dict], top: list[dict]) -> str:
    """The run's counts, each group with its members (conflicts first, as `groups` orders them), the outliers."""
    lines = [f"{run['n_groups']} near-duplicate groups among {run['n_images']} images, {run['n_conflicts']} with "
             f"conflicting labels (cosine >= {run['threshold']:g}" + (", or lower with matching pixels" if
                                                                 run["method"] == "exact" else "") +
             f", {run['method']} search)"]
    for g in found:
        lines.append(f"group {g['group']}: {g['size']} images" + (
            f", CONFLICT: {', '.join(g['labels'])}" if g["conflict"] else f", all {g['labels'][0]}"))
        lines += [f"  {m['id']}\t{m['label']}\t{m['path']}" for m in g["members"]]
    if top:
        lines.append("most outlying images (outlier score: higher = further from every class):")
        lines += [f"  {o['image_id']}\t{o['outlier_score']:.3f}\t{o['label']}\t{o['path']}" for o in top]
    return "\n".join(lines)
