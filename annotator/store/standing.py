"""Store queries behind the lead's estimates (``annotator.estimates``): one compact row per image, and how
many transfer-check items each class has (``annotator.queue``)."""

import time

from .schema import LIVE
from .base import StoreBase

# Columns of each tuple ``image_states`` returns, in order.
STATE_ROW = ("image_id", "label_id", "status", "score", "verdict", "corrected_label_id", "reason", "expected_wrong")

_SQL = (
    "SELECT i.id, i.label_id, i.status, s.score, lv.verdict, lv.corrected_label_id, lv.reason, s.expected_wrong"
    " FROM images i"
    f" LEFT JOIN verdicts lv ON lv.id = (SELECT MAX(v.id) FROM verdicts v WHERE v.image_id = i.id AND {LIVE})"
    " LEFT JOIN scores s ON s.model_version = :mv AND s.image_id = i.id ORDER BY i.id"
)


class StandingMixin(StoreBase):
    """Per-image state for the estimates of wrong labels, fixes and export counts; the transfer check's quota."""

    def image_states(self, model_version: int | None) -> list[tuple]:
        """Every image as a tuple of ``STATE_ROW`` columns, by id: its latest live verdict (None if none) and
        ``model_version``'s score and counting P(label wrong) (None without one). The same verdict and score the
        export reads."""
        return self.db.execute(_SQL, {"mv": model_version}).fetchall()

    def transfer_taken(self, *, now: float | None = None) -> dict[int, int]:
        """``{class_id: n}``: per class, the live correct/wrong 'transfer_check' verdicts plus the live leases
        served as transfer checks (a draw in progress counts against the class's quota)."""
        now = time.time() if now is None else now
        out: dict[int, int] = {}
        for c, n in self.db.execute(
                "SELECT i.label_id, COUNT(*) FROM verdicts v JOIN images i ON i.id = v.image_id WHERE"
                f" v.reason = 'transfer_check' AND v.verdict != 'unsure' AND {LIVE} GROUP BY i.label_id"):
            out[c] = out.get(c, 0) + n
        for c, n in self.db.execute(
                "SELECT i.label_id, COUNT(*) FROM leases l JOIN images i ON i.id = l.image_id WHERE"
                " l.reason = 'transfer_check' AND l.expires_at > ? GROUP BY i.label_id", [now]):
            out[c] = out.get(c, 0) + n
        return out
