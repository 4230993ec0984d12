"""Input formats beyond Pillow's built-in ones, registered with Pillow on import.

HEIF/HEIC (what iPhones save) comes through pi-heif: libheif with the libde265 decoder,
the decode-only build of pillow-heif (BSD; its libraries LGPL; no GPL x265 encoder).
AVIF is Pillow's own plugin (libavif, since Pillow 11.2). Both open lazily like every
Pillow format: the header gives the size, so the pixel guard runs before any decoding.
"""

from __future__ import annotations

from PIL import AvifImagePlugin

# One decoder thread per image: decoding runs in the stage threads beside the forward
# pass, which admission control budgets; a decoder's own pool would take cores it did
# not count (libavif defaults to every core, libheif to 4 threads).
DECODE_THREADS = 1


def _register() -> None:
    AvifImagePlugin.DEFAULT_MAX_THREADS = DECODE_THREADS
    try:
        import pi_heif
    except ImportError:  # pragma: no cover - pi-heif is a dependency; a broken install
        return
    # Only the primary image: thumbnails, depth maps and auxiliary images are not needed.
    pi_heif.register_heif_opener(
        thumbnails=False, depth_images=False, aux_images=False, decode_threads=DECODE_THREADS
    )


_register()
