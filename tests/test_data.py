"""Image input: everything a public demo may receive either loads as RGB or raises ImageError."""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from subspace.data import MAX_FILE_BYTES, MAX_SIDE, MIN_SIDE, ImageError, load_image, load_mask
from subspace.dataset import DatasetError, Sample, list_images, list_test, list_train

# ---------------------------------------------------------------- helpers


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _blank_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, a few KB even at 20000x20000. height: a multiple of 1000."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    rows = (b"\0" * (1 + (width + 7) // 8)) * 1000  # filter byte + packed row, 1000 rows
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(rows) for _ in range(height // 1000)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello, this is a plain text file\n", "text file"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
        (b"", "empty"),
    ],
)
def test_not_an_image(tmp_path, data, expected):
    path = _write(tmp_path / "upload.png", data)
    with pytest.raises(ImageError, match=expected) as err:
        load_image(path)
    assert str(err.value).startswith("'upload.png': ")


def test_zip_renamed_png(tmp_path):
    path = tmp_path / "photo.png"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not an image")
    with pytest.raises(ImageError, match="ZIP archive"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    data = _encode(_noise((64, 64)), fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_too_large_file_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ImageError, match="MB limit"):
        load_image(path)
    with pytest.raises(ImageError, match="MB limit"):
        load_image(io.BytesIO(b"\0" * (MAX_FILE_BYTES + 1)))


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (100, MIN_SIDE - 1)])
def test_too_small(tmp_path, size):
    path = _write(tmp_path / "tiny.png", _encode(Image.new("RGB", size), "PNG"))
    with pytest.raises(ImageError, match=f"at least {MIN_SIDE} pixels"):
        load_image(path)


def test_extreme_aspect(tmp_path):
    path = _write(tmp_path / "strip.png", _encode(Image.new("RGB", (4000, 16)), "PNG"))
    with pytest.raises(ImageError, match="aspect ratio"):
        load_image(path)


def test_decompression_bomb_is_refused_quickly(tmp_path):
    # 20000x20000 = 400 Mpx: Pillow's own bomb check fires when the header is read.
    bomb = _blank_png(20_000, 20_000)
    assert len(bomb) < 100_000
    # 8000x6000 = 48 Mpx: under Pillow's limit, over ours; refused from the header.
    big = _blank_png(8000, 6000)
    for data in (bomb, big):
        path = _write(tmp_path / "bomb.png", data)
        start = time.perf_counter()
        with pytest.raises(ImageError, match="pixels"):
            load_image(path)
        assert time.perf_counter() - start < 1.0  # decoding would take far longer


def test_message_uses_name():
    with pytest.raises(ImageError) as err:
        load_image(b"not an image", name="reference 'foo.png'")
    assert str(err.value).startswith("reference 'foo.png': ")


def test_no_file_handle_left_open(tmp_path):
    good = _write(tmp_path / "ok.png", _encode(_noise((32, 32)), "PNG"))
    bad = _write(tmp_path / "bad.png", _encode(_noise((32, 32)), "PNG")[:100])
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to count open file descriptors")
    before = _open_fds()
    for _ in range(5):
        load_image(good)
        with pytest.raises(ImageError):
            load_image(bad)
    assert _open_fds() == before


def test_wrong_source_type():
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(123)
    with pytest.raises(TypeError, match="binary mode"):
        load_image(io.StringIO("abc"))


# ---------------------------------------------------------------- accepted inputs


def _pixel(img: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_grayscale(tmp_path):
    path = _write(tmp_path / "g.png", _encode(Image.new("L", (32, 20), 100), "PNG"))
    img = load_image(path)
    assert img.size == (32, 20)
    assert _pixel(img) == (100, 100, 100)


def test_rgba_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    rgba.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    img = load_image(_write(tmp_path / "a.png", _encode(rgba, "PNG")))
    assert _pixel(img, (0, 0)) == (255, 255, 255)
    assert _pixel(img, (1, 0)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in _pixel(img, (2, 0)))
    la = load_image(Image.new("LA", (16, 16), (0, 0)))
    assert _pixel(la) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, 1 red
    pal.putpixel((5, 5), 1)
    path = _write(tmp_path / "p.png", _encode(pal, "PNG", transparency=0))
    img = load_image(path)
    assert _pixel(img, (0, 0)) == (255, 255, 255)  # transparent black -> white
    assert _pixel(img, (5, 5)) == (255, 0, 0)


def test_16_bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 1000, 65535]], dtype=np.uint16).repeat(16, 0).repeat(4, 1)
    src = Image.fromarray(values)  # (16, 16) I;16
    path = _write(tmp_path / "deep.png", _encode(src, "PNG"))
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # really stored as 16 bit
    row = np.asarray(load_image(path))[0, ::4, 0]
    assert row.tolist() == [0, 100, 4, 255]  # 1000 / 257 = 3.9 -> 4; clipping would give 255
    as_array = np.asarray(load_image(values))[0, ::4, 0]
    assert as_array.tolist() == [0, 100, 4, 255]
    big_endian = Image.frombytes("I;16B", (16, 16), values.astype(">u2").tobytes())
    assert np.asarray(load_image(big_endian))[0, ::4, 0].tolist() == [0, 100, 4, 255]


def test_int32_and_float_modes():
    i32 = Image.fromarray(np.full((16, 16), 257 * 7, dtype=np.int32))  # mode "I"
    assert _pixel(load_image(i32)) == (7, 7, 7)
    f = np.array([[-5.0, 100.4, 300.0]], dtype=np.float32).repeat(16, 0).repeat(6, 1)
    out = np.asarray(load_image(Image.fromarray(f)))[0, ::6, 0]  # mode "F": clipped to 0..255
    assert out.tolist() == [0, 100, 255]


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    path = _write(tmp_path / "print.jpg", _encode(cmyk, "JPEG", quality=95))
    r, g, b = _pixel(load_image(path), (16, 16))
    assert r > 230 and g < 30 and b < 30


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (24, 24), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    assert _pixel(load_image(path), (12, 12)) == (255, 0, 0)


def test_exif_orientation_applied(tmp_path):
    src = Image.new("RGB", (40, 20), (255, 0, 0))
    src.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _write(tmp_path / "phone.jpg", _encode(src, "JPEG", exif=exif, quality=95))
    img = load_image(path)
    assert img.size == (20, 40)  # transposed
    top, bottom = _pixel(img, (10, 5)), _pixel(img, (10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_big_image_downscaled(tmp_path):
    png = _write(tmp_path / "big.png", _encode(Image.new("RGB", (3000, 1500), (9, 99, 199)), "PNG"))
    img = load_image(png)
    assert img.size == (MAX_SIDE, MAX_SIDE // 2)
    assert _pixel(img, (100, 100)) == (9, 99, 199)
    # JPEG goes through draft() (decoded at 1/2 scale) then the exact resize.
    jpg = _write(
        tmp_path / "big.jpg", _encode(Image.new("RGB", (4100, 2050), (200, 30, 30)), "JPEG")
    )
    assert load_image(jpg).size == (MAX_SIDE, MAX_SIDE // 2)
    assert load_image(np.zeros((2100, 300, 3), np.uint8)).size == (293, MAX_SIDE)


def test_other_source_kinds(tmp_path):
    data = _encode(Image.new("RGB", (20, 30), (1, 2, 3)), "PNG")
    path = _write(tmp_path / "x.png", data)
    with open(path, "rb") as f:
        from_file = load_image(f)
    for img in (load_image(data), load_image(str(path)), from_file, load_image(bytearray(data))):
        assert img.size == (20, 30) and _pixel(img) == (1, 2, 3)
    src = Image.new("RGB", (20, 30), (1, 2, 3))
    out = load_image(src)
    assert out is not src and _pixel(out) == (1, 2, 3)


@pytest.mark.parametrize(
    ("array", "pixel"),
    [
        (np.full((20, 20), 50, np.uint8), (50, 50, 50)),
        (np.full((20, 20, 1), 50, np.uint8), (50, 50, 50)),
        (np.full((20, 20, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((20, 20, 4), (9, 9, 9, 0), np.uint8), (255, 255, 255)),
        (np.full((20, 20, 3), 257 * 10, np.uint16), (10, 10, 10)),
        (np.full((20, 20, 3), 0.5), (128, 128, 128)),
        (np.full((20, 20), 1.0, np.float32), (255, 255, 255)),
    ],
)
def test_numpy_arrays(array, pixel):
    assert _pixel(load_image(array)) == pixel


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((20, 20, 2), np.uint8), "shape"),
        (np.zeros((20, 20), np.int64), "dtype"),
        (np.full((20, 20), 200.0), r"\[0, 1\]"),
        (np.full((20, 20), np.nan), "NaN"),
        (np.zeros((10, 20), np.uint8), "at least"),
    ],
)
def test_bad_numpy_arrays(array, expected):
    with pytest.raises(ImageError, match=expected):
        load_image(array)


# ---------------------------------------------------------------- fuzzing

_SEED_IMAGES = [
    _encode(_noise((24, 20)), "PNG"),
    _encode(_noise((24, 20)).convert("P"), "PNG", transparency=3),
    _encode(_noise((24, 20)), "JPEG", quality=80),
    _encode(_noise((24, 20)), "GIF"),
    _encode(_noise((24, 20)), "BMP"),
    _encode(_noise((24, 20)), "TIFF"),
    _encode(_noise((24, 20)), "WEBP"),
]


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEED_IMAGES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "cut", "insert", "header"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "header" and data:  # hit the size / type fields that parsers trust most
            j = draw(st.integers(0, min(40, len(data) - 1)))
            data[j] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            data = data[:i]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about some corrupt files
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048), _mutated()))
def test_fuzz_only_image_error_escapes(data):
    try:
        img = load_image(data)
    except ImageError as err:
        assert str(err).startswith("image: ")
        return
    assert img.mode == "RGB"
    assert max(img.size) <= MAX_SIDE and min(img.size) >= 1


# ---------------------------------------------------------------- masks and MVTec folders


def test_load_mask(tmp_path):
    assert not load_mask(None, (7, 5)).any()
    assert load_mask(None, (7, 5)).shape == (5, 7)
    m = np.zeros((4, 6), np.uint8)
    m[1:3, 2:4] = 255
    path = _write(tmp_path / "m.png", _encode(Image.fromarray(m), "PNG"))
    same = load_mask(path, (6, 4))
    assert same.dtype == bool and same.tolist() == (m > 0).tolist()
    doubled = load_mask(path, (12, 8))  # nearest resize
    assert doubled.tolist() == np.kron(m > 0, np.ones((2, 2), bool)).tolist()
    one_bit = _write(tmp_path / "b.png", _encode(Image.fromarray(m > 0), "PNG"))
    assert load_mask(one_bit, (6, 4)).tolist() == (m > 0).tolist()
    with pytest.raises(ImageError, match="not found"):
        load_mask(tmp_path / "missing_mask.png", (6, 4))


def _tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(Image.new("L", (16, 16)), "PNG"))


def test_mvtec_listing(tmp_path, caplog):
    _tree(
        tmp_path,
        [
            "train/good/001.png",
            "train/good/000.PNG",
            "train/good/.000.png",  # hidden (e.g. macOS resource fork): skipped
            "test/good/000.png",
            "test/crack/000.png",
            "test/crack/001.jpg",
            "ground_truth/crack/000_mask.png",
        ],
    )
    (tmp_path / "train/good/notes.txt").write_text("not an image")
    train = list_train(tmp_path)
    assert [p.name for p in train] == ["000.PNG", "001.png"]
    with caplog.at_level(logging.WARNING, logger="subspace.data"):
        test = list_test(tmp_path)
    gt = tmp_path / "ground_truth" / "crack"
    assert test == [
        Sample(tmp_path / "test/crack/000.png", gt / "000_mask.png", "crack"),
        Sample(tmp_path / "test/crack/001.jpg", None, "crack"),
        Sample(tmp_path / "test/good/000.png", None, "good"),
    ]
    assert "no mask" in caplog.text and "001.jpg" in caplog.text


def test_mvtec_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="train/good"):
        list_train(tmp_path)
    with pytest.raises(ValueError, match="root/test/<defect>"):
        list_test(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path / "empty")
