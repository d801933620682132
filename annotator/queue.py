"""The review queue: which images an annotator sees next (no SQL here; queries live in ``annotator.store``).

Rules, in order:

1. Only classes chosen for verification are served (``classes --verify``), except rule 6's draws.
2. The annotator's own live leases come back first, so a browser reload resumes where it was.
3. New items: with a current model, each slot is, with probability ``audit_share`` (setting,
   default 0.2), a uniform random draw marked ``audit``; otherwise the candidate with the
   lowest ``uncertainty = |score - delta|`` (the model's least sure image) marked
   ``uncertain``; for a model that scores by the verdict-free rule, the images nearest its
   boundary and its lowest-scored ones in turn (``annotator.publish.queue_order``). Audit
   verdicts are an unbiased sample: delta, detection error and human-measured noise rates are
   computed from them only.
   Before the uncertainty order, the non-audit slots go to members of near-duplicate groups whose members carry
   different labels (``annotator.duplicates``: the same picture under two labels is label-noise evidence), a
   group's members one after another, also marked ``uncertain``; the audit draws are untouched.
4. Cold start (no current model): every item is a random draw, marked ``audit``.
5. Never an image with a live verdict or someone else's live lease. Every served item is
   leased with ``Store.acquire_leases`` (``lease_seconds`` setting, default 600 s); an item
   lost to a concurrent annotator is dropped and the queue tries once more to fill up.
6. Transfer check: the annotators a lead names (``transfer_annotators`` setting) first get, until each
   unverified class holds ``transfer_per_class`` (default 20) correct/wrong verdicts of that kind, uniform
   random draws in those classes, marked ``transfer_check`` and shown blind like audit items. They measure the
   model where nobody verifies (``annotator.estimates``) and train nothing (``pipeline.verdict_split``).

Example::

    store = Store()
    item = next_items(store, "ann")[0]
    store.record_verdict(item.image_id, "ann", "correct", reason=item.reason, model_version=item.model_version)
"""

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime

from .store import REASONS, Store, UnknownClass

log = logging.getLogger(__name__)

STAGGER = 1e-3  # seconds between the lease expiries of items served together (keeps their order)


@dataclass
class QueueItem:
    image_id: int
    path: str                      # absolute image path
    label: str                     # the noisy label under review (verbatim: escape before rendering as HTML)
    score: float | None            # model score (higher = label more likely correct); None: no model
    suggested_label: str | None    # the model's best other class, if it wrote one
    suggested_score: float | None
    reason: str                    # 'uncertain' | 'audit' | 'grid' | 'transfer_check': record_verdict(reason=...)
    model_version: int | None = None  # the model that chose the item; pass to record_verdict(model_version=...)
    content_hash: str = ""         # recorded at ingest: the display shows the file only while its bytes match

    @classmethod
    def of(cls, row: dict, reason: str, version: int | None) -> "QueueItem":
        """The item of a ``Store.queue_rows`` row, served for ``reason`` by model ``version``."""
        return cls(row["image_id"], row["path"], row["label"], row["score"], row["suggested_label"],
                   row["suggested_score"], reason, version, row["hash"])


def _class_ids(store: Store, class_name: str | None) -> list[int]:
    verify = store.verify_classes()
    if class_name is None:
        return list(verify.values())
    if class_name.strip() not in verify:
        store.class_id(class_name)  # raises UnknownClass for a name that does not exist at all
        raise UnknownClass(f"class {class_name!r} is not chosen for verification")
    return [verify[class_name.strip()]]


def _items(store: Store, ids: list[int], reasons: dict[int, str], version: int | None) -> list[QueueItem]:
    rows = store.queue_rows(ids, version)
    return [QueueItem.of(rows[i], reasons[i], version) for i in ids if i in rows]


def _serve(store: Store, annotator: str, class_ids: list[int], n: int, resume_reason: str, draw,
           now: float, *, keep_stored: bool = True) -> tuple[list[int], dict[int, str]]:
    """Lease up to ``n`` ids: the annotator's own live leases first (renewed), then new ones from
    ``draw(k, exclude) -> [(id, reason)]``, with one retry after losing a race for some of them.

    A lease records why its item was served, so a resumed item keeps its reason (an audit draw
    stays an audit draw after a reload); a lease without one (granted elsewhere, e.g. an undo)
    gets ``resume_reason``: never 'audit' once a model exists, because an image chosen by
    uncertainty must not enter the unbiased audit sample. Expiries are staggered in serve
    order, so a reload shows the items in the order first served. With ``keep_stored=False`` every
    resumed item gets ``resume_reason`` (the grid: its verdicts are 'grid' however the image was drawn).
    """
    seconds = store.get_setting("lease_seconds")
    own = store.leased_candidates(annotator, class_ids, now=now)[:n]
    ids = store.acquire_leases(annotator, own, seconds, now=now, stagger=STAGGER) if own else []
    stored = store.lease_reasons(annotator, ids) if ids and keep_stored else {}
    # a stored reason a verdict may not carry (a copy's 'propagated' after an undo) resumes as resume_reason
    reasons = {i: stored[i] if stored.get(i) in REASONS else resume_reason for i in ids}
    for attempt in range(2):
        if len(ids) >= n:
            break
        wanted = draw(n - len(ids), list(ids))
        if not wanted:
            break
        granted = set(store.acquire_leases(annotator, [i for i, _ in wanted], seconds,
                                           now=now + len(ids) * STAGGER, stagger=STAGGER, reasons=dict(wanted)))
        for i, reason in wanted:
            if i in granted:
                ids.append(i)
                reasons[i] = reason
        if len(granted) < len(wanted):
            log.debug("queue: %s lost %d of %d items to other annotators (attempt %d)", annotator,
                      len(wanted) - len(granted), len(wanted), attempt + 1)
    return ids, reasons


def _next(store: Store, annotator: str, n: int, class_ids: list[int], model: dict | None, rng: random.Random,
          now: float) -> list[QueueItem]:
    version = model["version"] if model else None
    share = float(store.get_setting("audit_share"))

    def draw(k: int, exclude: list[int]) -> list[tuple[int, str]]:
        # Cold start: with no model there is no uncertainty to sort by, so every item is a uniform random
        # draw. Such draws are exactly what 'audit' means (chosen independently of any score), so they
        # seed the audit sample that the first model's delta is chosen on.
        n_audit = k if model is None else sum(rng.random() < share for _ in range(k))
        picks = [(i, "audit") for i in store.random_candidates(class_ids, n_audit, rng=rng, now=now,
                                                               exclude=exclude)]
        if k - n_audit:
            conflicts = store.conflict_candidates(class_ids, k - n_audit, now=now,
                                                  exclude=exclude + [i for i, _ in picks])
            picks += [(i, "uncertain") for i in conflicts]
            if k - n_audit - len(conflicts):
                uncertain = store.uncertain_candidates(version, class_ids, k - n_audit - len(conflicts), now=now,
                                                       exclude=exclude + [i for i, _ in picks])
                picks += [(i, "uncertain") for i in uncertain]
        return picks

    ids, reasons = _serve(store, annotator, class_ids, n, "uncertain" if model else "audit", draw, now)
    log.debug("queue: %s gets %s", annotator, [(i, reasons[i]) for i in ids])
    return _items(store, ids, reasons, version)


def _transfer(store: Store, annotator: str, n: int, rng: random.Random, now: float) -> list[QueueItem]:
    """Up to ``n`` transfer-check items (rule 6) for ``annotator``: their own such leases first, then uniform
    random draws in the unverified classes whose quota is not full, a class chosen in proportion to what it
    still lacks."""
    if annotator not in (store.get_setting("transfer_annotators") or []):
        return []
    quota = int(store.get_setting("transfer_per_class") or 0)
    unverified = [c["id"] for c in store.classes() if not c["verify"]]
    if quota <= 0 or not unverified:
        return []
    model = store.current_model()
    version = model["version"] if model else None

    def draw(k: int, exclude: list[int]) -> list[tuple[int, str]]:
        taken = store.transfer_taken(now=now)
        due = {c: quota - taken.get(c, 0) for c in unverified if quota > taken.get(c, 0)}
        picks: list[tuple[int, str]] = []
        while len(picks) < k and due:
            c = rng.choices(list(due), weights=list(due.values()))[0]
            found = store.random_candidates([c], 1, rng=rng, now=now, exclude=exclude + [i for i, _ in picks])
            if found:
                picks.append((found[0], "transfer_check"))
            due[c] = due[c] - 1 if found else 0
            due = {c: d for c, d in due.items() if d > 0}
        return picks

    ids, reasons = _serve(store, annotator, unverified, n, "transfer_check", draw, now)
    return _items(store, ids, reasons, version)


def next_items(store: Store, annotator: str, *, n: int = 1, class_name: str | None = None,
               rng: random.Random | None = None, now: float | None = None) -> list[QueueItem]:
    """Up to ``n`` leased items for ``annotator`` (fewer when the verify classes run out); see the rules above.

    ``class_name`` restricts the queue to one verify class (``UnknownClass`` if it is not one; no transfer check).
    ``rng`` (a ``random.Random``) makes the audit choice and the random draws reproducible.
    """
    rng = rng or random.Random()
    now = time.time() if now is None else now
    class_ids = _class_ids(store, class_name)
    transfer = _transfer(store, annotator, n, rng, now) if class_name is None else []
    if len(transfer) == n:
        return transfer
    items: list[QueueItem] = []
    for _ in range(2):  # once more if a new model became current meanwhile (its scores replace the old ones)
        model = store.current_model()
        items = _next(store, annotator, n - len(transfer), class_ids, model, rng, now)
        if len(items) == n - len(transfer) or (store.current_model() or {}).get("version") == (model or {}).get(
                "version"):
            break
    return transfer + items


def grid_items(store: Store, annotator: str, class_name: str, n: int = 16, *, rng: random.Random | None = None,
               now: float | None = None) -> list[QueueItem]:
    """Up to ``n`` leased items of one verify class for a grid, reason 'grid': the annotator's own leases
    in that class first, then the candidates first in the queue order (rule 3; no model: consecutive ones from a
    random id)."""
    now = time.time() if now is None else now
    class_ids = _class_ids(store, class_name)
    model = store.current_model()
    version = model["version"] if model else None

    def draw(k: int, exclude: list[int]) -> list[tuple[int, str]]:
        return [(i, "grid") for i in store.grid_candidates(class_ids[0], k, version, rng=rng, now=now,
                                                           exclude=exclude)]

    ids, reasons = _serve(store, annotator, class_ids, n, "grid", draw, now, keep_stored=False)
    return _items(store, ids, reasons, version)


def midnight(now: float | None = None) -> float:
    """Unix time of the last local midnight (before ``now``, default the present): where "today" starts."""
    now = time.time() if now is None else now
    return datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def queue_status(store: Store, annotator: str, *, now: float | None = None) -> dict:
    """``{"remaining": {verify class: candidates left}, "mine_today": live verdicts of ``annotator``
    since local midnight, "verdicts_total": all live verdicts}``."""
    now = time.time() if now is None else now
    return {"remaining": store.remaining_by_class(now=now),
            "mine_today": store.verdict_count_by(annotator, midnight(now)),
            "verdicts_total": store.verdict_count()}
