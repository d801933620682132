"""Store queries behind the CSV export (``annotator.export``): one row per image, paged by id."""

from collections.abc import Iterator

from .schema import LIVE
from .base import StoreBase

# Columns of each tuple ``export_rows`` yields, in order.
EXPORT_ROW = ("image_id", "path", "noisy_label", "verdict", "corrected_label", "annotator", "verified_at",
              "score", "suggested_label", "suggested_score", "duplicate_group", "outlier_score", "verdict_reason",
              "verdict_source")

# The latest live verdict of image i: the correlated subquery probes verdicts_image per image. A propagated
# verdict's source_id is the verdict it was applied from; the export names that verdict's image (si.path).
_SQL = (
    "SELECT i.id, i.path, c.name, lv.verdict, cc.name, lv.annotator, lv.created_at,"
    " s.score, sc.name, s.suggested_score, d.group_id, d.outlier_score, lv.reason, si.path"
    " FROM images i JOIN classes c ON c.id = i.label_id"
    f" LEFT JOIN verdicts lv ON lv.id = (SELECT MAX(v.id) FROM verdicts v WHERE v.image_id = i.id AND {LIVE})"
    " LEFT JOIN classes cc ON cc.id = lv.corrected_label_id"
    " LEFT JOIN verdicts sv ON sv.id = lv.source_id LEFT JOIN images si ON si.id = sv.image_id"
    " LEFT JOIN scores s ON s.model_version = :mv AND s.image_id = i.id"
    " LEFT JOIN classes sc ON sc.id = s.suggested_label_id"
    " LEFT JOIN duplicates d ON d.run_id = (SELECT id FROM duplicate_runs WHERE is_current = 1) AND d.image_id = i.id"
    " WHERE i.id > :after ORDER BY i.id LIMIT :page"
)


class ExportMixin(StoreBase):
    """Streaming reads for exports."""

    def export_rows(self, model_version: int | None, *, page: int = 5000) -> Iterator[tuple]:
        """Every image as a tuple of ``EXPORT_ROW`` columns, by id.

        Verdict columns come from the image's latest live verdict (None if it has none);
        score columns from ``model_version``'s score row (None without one, or when
        ``model_version`` is None); ``duplicate_group`` and ``outlier_score`` from the current duplicate run
        (None outside a group, or without a run). ``verified_at`` is the verdict's Unix time; ``verdict_reason``
        its reason; ``verdict_source`` the path of the image a 'propagated' verdict was applied from (else None).
        Each page of ``page`` rows is one short query, so no read transaction stays open between pages:
        verdicts and models written meanwhile show up in later pages.
        """
        after = 0
        while True:
            rows = self.db.execute(_SQL, {"mv": model_version, "after": after, "page": page}).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]
