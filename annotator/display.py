"""Reading a stored image file again for display, with the checks of ingest, and handing it to the page inline.

A stored path was absolute and resolved (inside its ingest root) when it was ingested; the file may have
changed since. ``read_for_display`` reads it with ``cleannet_core.safe_open.read_image`` (no symbolic link
anywhere along the path, a regular file with a single link, at most ``MAX_BYTES``, within ``TIMEOUT_S``),
checks its bytes against the content hash recorded at ingest (a file replaced or edited in place since is
"changed since ingest", and its new content is not shown) and decodes it fully within ``ingest.MAX_PIXELS``.
Otherwise it returns the reason.

``inline`` turns the checked bytes into a ``data:`` URI that the page embeds in its HTML. Streamlit's
``st.image`` would publish them under ``/media/...``, a URL its server answers without asking who is signed
in; an inline image exists only in the signed-in page itself.
"""
import base64
import io
import logging
from dataclasses import dataclass

from PIL import Image

from cleannet_core.keys import CHANGED, content_hash
from cleannet_core.safe_open import FileRefused, read_image

from .ingest import MAX_PIXELS, decode

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 2 ** 20  # larger files are not read for display
TIMEOUT_S = 5.0  # a file not read within this is not shown (the page waits for it)
MAX_SIDE = 1600  # pixels: larger images are shown scaled down (a grid tile or the single view never needs more)
WEB_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


def read_for_display(path: str, *, expected_hash: str, max_pixels: int = MAX_PIXELS,
                     max_bytes: int = MAX_BYTES) -> bytes | str:
    """The bytes of the image at ``path`` when it passes the checks above, else a short reason (``safe_open``
    and ``ingest`` reason strings, or ``keys.CHANGED`` when its bytes no longer hash to ``expected_hash``)."""
    try:
        data = read_image(path, max_bytes=max_bytes, timeout_s=TIMEOUT_S).data
    except FileRefused as e:
        log.info("not shown: %s", e)
        return e.reason
    if content_hash(data) != expected_hash:
        return CHANGED
    size = decode(data, max_pixels)  # checks the size before decoding; Pillow's process-wide limit stays as it is
    return size if isinstance(size, str) else data


def inline(data: bytes, *, max_side: int = MAX_SIDE) -> str:
    """A ``data:`` URI of checked image bytes: as they are when a browser shows their format and they fit in
    ``max_side``, else scaled down (aspect kept) and re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as im:  # decoded once already, within MAX_PIXELS
        mime = WEB_FORMATS.get(im.format or "")
        if mime is None or max(im.size) > max_side:
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            im.thumbnail((max_side, max_side))
            out = io.BytesIO()
            im.save(out, format="PNG")
            data, mime = out.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass(frozen=True)
class Inline:
    uri: str  # data: URI of an image that passed read_for_display's checks


def for_page(path: str, *, expected_hash: str, max_side: int = MAX_SIDE) -> Inline | str:
    """``read_for_display``, made ready for the page: the image inline, or the reason it is not shown."""
    data = read_for_display(path, expected_hash=expected_hash)
    return data if isinstance(data, str) else Inline(inline(data, max_side=max_side))
