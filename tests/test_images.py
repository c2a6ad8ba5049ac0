import pytest
from PIL import Image

from cirlab.images import MAX_PIXELS, UnreadableImage, list_images, load_image
from cirlab.errors import CirlabError


def test_huge_image_is_refused_without_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (10_000, MAX_PIXELS // 10_000 + 10)).save(p)  # a few KB on disk, 40M+ pixels
    with pytest.raises(UnreadableImage, match="pixel limit"):
        load_image(p)


def test_transparency_is_composited_on_white(tmp_path):
    p = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(p)
    assert load_image(p).getpixel((0, 0)) == (255, 255, 255)


def test_truncated_file_and_missing_folder(tmp_path):
    p = tmp_path / "cut.jpg"
    full = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), "red").save(full)
    p.write_bytes(full.read_bytes()[:40])
    with pytest.raises(UnreadableImage, match="not a readable image"):
        load_image(p)
    with pytest.raises(CirlabError, match="does not exist"):
        list_images(tmp_path / "nowhere")
