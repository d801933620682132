"""Store query behind the lead's estimates (``annotator.estimates``): one compact row per image."""

from ..schema import LIVE
from .base import StoreBase

# Columns of each tuple ``image_states`` returns, in order.
STATE_ROW = ("image_id", "label_id", "status", "score", "verdict", "corrected_label_id", "reason")

_SQL = (
    "SELECT i.id, i.label_id, i.status, s.score, lv.verdict, lv.corrected_label_id, lv.reason FROM images i"
    f" LEFT JOIN verdicts lv ON lv.id = (SELECT MAX(v.id) FROM verdicts v WHERE v.image_id = i.id AND {LIVE})"
    " LEFT JOIN scores s ON s.model_version = :mv AND s.image_id = i.id ORDER BY i.id"
)


class StandingMixin(StoreBase):
    """Per-image state for the estimates of wrong labels, fixes and export counts."""

    def image_states(self, model_version: int | None) -> list[tuple]:
        """Every image as a tuple of ``STATE_ROW`` columns, by id: its latest live verdict (None if none) and
        ``model_version``'s score (None without one). The same verdict and score the export reads."""
        return self.db.execute(_SQL, {"mv": model_version}).fetchall()
