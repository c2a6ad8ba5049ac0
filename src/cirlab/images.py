"""Reading images safely: corrupt, truncated, huge or odd-mode files become a clear reason, not a crash."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps

from cirlab.errors import CirlabError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".avif", ".tif", ".tiff")
MAX_PIXELS = 40_000_000  # a larger image is refused as a likely decompression bomb
MAX_BYTES = 64 * 1024 * 1024
# Decoded images are shrunk (aspect kept) so that their long side is at most MAX_SIDE before anything
# pads or copies them: padding to a square then costs at most MAX_SIDE**2 pixels (12.6 MB of RGB),
# whatever the shape. The decode itself is bounded by MAX_PIXELS (at most 160 MB at 4 bytes a pixel;
# JPEGs decode at a reduced scale). Encoders read at most 512 px, so nothing downstream loses detail.
MAX_SIDE = 2048


class UnreadableImage(CirlabError):
    """The file is not an image cirlab can read; the message says why."""


class ImageTooLarge(UnreadableImage):
    """An image over the pixel limit (a likely decompression bomb)."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; transparency is composited onto white (emoji, product cut-outs)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"{path}: no such image file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UnreadableImage(f"{path}: file is {size / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB limit")
    return _decode(path, str(path), MAX_PIXELS)


def decode_image(data: bytes, name: str = "upload", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded file's bytes as RGB, with the same refusals as ``load_image`` (bombs, corrupt data).

    Raises ``UnreadableImage`` for bytes that are not an image and ``ImageTooLarge`` for too many pixels.
    """
    import io

    if not data:
        raise UnreadableImage(f"{name}: the file is empty")
    image = _decode(io.BytesIO(data), name, max_pixels)
    if ends_early(data):
        image.info["ends_early"] = True
    return image


# the bytes a whole file of these formats ends with: PNG's IEND chunk, GIF's trailer
_ENDINGS = {b"\x89PNG\r\n\x1a\n": b"IEND\xaeB`\x82", b"GIF8": b";"}


def ends_early(data: bytes) -> bool:
    """Whether a PNG or GIF file lacks its last bytes (Pillow decodes such a file without a word when its pixels are
    all there): a sign of a cut-off upload, worth a warning though the image is read."""
    return any(data.startswith(magic) and not data.endswith(end) for magic, end in _ENDINGS.items())


def _decode(source, name: str, max_pixels: int) -> Image.Image:
    """Open a file or file object as RGB (EXIF orientation applied); too many pixels, a decompression
    bomb or undecodable data become an ``UnreadableImage`` that names ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{name}: {w}x{h} pixels is over the {max_pixels:,} pixel limit")
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale where that suffices
                im.load()
                if max(im.size) > MAX_SIDE:
                    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.BICUBIC)
                return to_rgb(ImageOps.exif_transpose(im))
    except UnreadableImage:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageTooLarge(f"{name}: refused as a decompression bomb (too many pixels)") from None
    except MemoryError:
        raise ImageTooLarge(f"{name}: too large to decode in memory") from None
    except Exception as e:
        detail = f": {e}" if isinstance(source, Path) and isinstance(e, OSError) else ""  # no paths from uploads
        raise UnreadableImage(f"{name}: not a readable image ({type(e).__name__}{detail})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        return bg.convert("RGB")
    return im.convert("RGB")


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), sorted, by suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CirlabError(f"gallery folder {folder} does not exist; pass a folder of jpg/png/webp images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class _Files:
    """Paths as a map-style data set for torch's DataLoader: item n is the decoded image or its error."""

    def __init__(self, paths) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, n: int) -> Image.Image | UnreadableImage:
        try:
            return load_image(self.paths[n])
        except UnreadableImage as e:
            return e


def decode_images(paths, batch_size: int, workers: int = 0):
    """Batches of decoded images in ``paths``' order, each a list holding an image or the
    :class:`UnreadableImage` error of its file. With ``workers`` > 0, that many data-loader processes decode
    ahead of the consumer (on a GPU, decoding is what it would wait for); with 0 this process decodes."""
    files = _Files(paths)
    if workers <= 0:
        for s in range(0, len(files), batch_size):
            yield [files[n] for n in range(s, min(s + batch_size, len(files)))]
        return
    from torch.utils.data import DataLoader

    yield from DataLoader(files, batch_size=batch_size, num_workers=workers, collate_fn=list,
                          prefetch_factor=4, persistent_workers=False)
