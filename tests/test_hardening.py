"""Every kind of file a public demo receives, through the app's own components and handlers.

Uploads go the way the server sends them: the component's ``preprocess`` first (gradio runs it
before any handler), then the handler. Bad input must end in a ``gr.Error`` naming the file and
the problem, leave the visitor's session as it was, and never take the app down; odd but valid
images (grayscale, alpha, palette, 16 bit, CMYK, animated, EXIF-rotated, tiny, long and thin,
references of different sizes) must load exactly as ``subspace.data.load_image`` loads them and
run. The CLI gets the same files: exit code 2 and one message, no traceback.
"""

from __future__ import annotations

import io
import math
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.data_classes import FileData, ImageData, ListFiles
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from subspace import cli, uploads
from subspace import session as ss
from subspace.data import MAX_FILE_BYTES, MAX_PIXELS, MIN_SIDE, load_image
from subspace.synthetic import texture


class Progress:
    def __call__(self, fraction: float, desc: str | None = None) -> None:
        pass


# ----------------------------------------------------------------------------- files
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _texture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """(W, H) -> an RGB image of the synthetic example's texture."""
    w, h = size
    return Image.fromarray(texture((h, w), seed=seed))


def _blank_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, a few KB: a decompression bomb."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed row
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000))
    idat += comp.compress(row * (height % 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.png", _encode(_texture((64, 64)), "PNG"))
    return buf.getvalue()


# name -> (bytes, words the message must contain). Each is refused before any fitting.
BAD_FILES = {
    "notes.png": (lambda: b"hello, this is a plain text file\n" * 4, "text file"),
    "scan.png": (lambda: b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "PDF"),
    "archive.png": (_zip, "ZIP"),
    "cut.jpg": (
        lambda: _encode(_texture((256, 256)), "JPEG", quality=90)[:3000],
        "truncated or corrupt",
    ),
    "cut.png": (lambda: _encode(_texture((256, 256)), "PNG")[:2000], "truncated or corrupt"),
    "blank.png": (lambda: b"", "empty"),  # the name must not contain the expected word
    "dot.png": (lambda: _encode(Image.new("RGB", (1, 1)), "PNG"), f"at least {MIN_SIDE}"),
    "tiny.png": (lambda: _encode(_texture((8, 8)), "PNG"), f"at least {MIN_SIDE}"),
    "strip.png": (lambda: _encode(Image.new("RGB", (4000, 16)), "PNG"), "aspect ratio"),
    "bomb.png": (lambda: _blank_png(20_000, 20_000), "pixels"),  # 400 Mpx, 50 KB
    "huge.png": (lambda: _blank_png(9000, 9000), f"{MAX_PIXELS / 1e6:.0f}-megapixel limit"),
    "large.png": (None, "limit"),  # over MAX_FILE_BYTES: a sparse file, never read
}


def _write_bad(folder: Path, name: str) -> Path:
    path = folder / name
    make = BAD_FILES[name][0]
    if make is None:
        with open(path, "wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)
    else:
        path.write_bytes(make())
    return path


def _odd_files(folder: Path) -> dict[str, Path]:
    """Valid images in every mode a browser may send; the mode is part of what is checked."""
    base = _texture((96, 72), seed=3)
    out = {}

    gray = folder / "gray.png"
    base.convert("L").save(gray)
    out["gray"] = gray

    rgba = base.convert("RGBA")
    alpha = Image.new("L", base.size, 255)
    alpha.paste(0, (0, 0, 48, 72))  # left half transparent over black pixels
    rgba.putalpha(alpha)
    rgba.paste((0, 0, 0, 0), (0, 0, 48, 72))
    rgba.save(folder / "alpha.png")
    out["alpha"] = folder / "alpha.png"

    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.paste(0, (0, 0, 48, 72))  # left half: palette index 0, the transparent one
    pal.save(folder / "palette.png", transparency=0)
    out["palette"] = folder / "palette.png"

    deep = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")  # mode I;16, values up to 65535
    out["16bit"] = folder / "deep16.png"

    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(folder / "print.jpg", quality=95)
    out["cmyk"] = folder / "print.jpg"

    frames = [Image.new("RGB", (48, 48), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    out["gif"] = folder / "anim.gif"

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: a phone photo held upright
    _texture((300, 180), seed=4).save(folder / "phone.jpg", exif=exif, quality=92)
    out["exif"] = folder / "phone.jpg"
    return out


# ----------------------------------------------------------------------------- upload path
def _component(app, elem_id: str):
    return next(b for b in app.demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def as_query(app, path: Path | str):
    """What the query handler receives for an uploaded file (gradio's preprocess first)."""
    path = Path(path)
    return _component(app, "query").preprocess(ImageData(path=str(path), orig_name=path.name))


def as_refs(app, paths):
    """What the handlers receive for uploaded reference files."""
    files = [FileData(path=str(p), orig_name=Path(p).name) for p in paths]
    return _component(app, "refs").preprocess(ListFiles(root=files))


def upload_and_detect(app, refs, query, state=None):
    """The whole server path of a click on "Detect": preprocess, then the handler."""
    return app.detect(as_refs(app, refs), as_query(app, query), "lite0", 0.25, state, Progress())


def _error(fn, *args) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    message = str(info.value)
    assert "Traceback" not in message and "went wrong" not in message, message
    return message


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(received):
    folder = received("uploads")
    good = folder / "good"
    good.mkdir()
    _texture((200, 150), seed=1).convert("L").save(good / "ref_gray.png")  # two sizes, modes
    rgba = _texture((256, 256), seed=2).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((256, 256)))
    rgba.save(good / "ref_alpha.png")
    _texture((300, 180), seed=5).save(good / "query.jpg", quality=92)  # a third size
    bad = folder / "bad"
    bad.mkdir()
    return dict(
        refs=[good / "ref_gray.png", good / "ref_alpha.png"],
        query=good / "query.jpg",
        bad={name: _write_bad(bad, name) for name in BAD_FILES},
        odd=_odd_files(folder),
    )


@pytest.fixture(scope="module")
def fitted(app_module, files):
    """A session fitted on two references of different sizes and modes; outputs of the run."""
    out = upload_and_detect(app_module, files["refs"], files["query"])
    return out, out[-1]


def _same_session(state: ss.Session, snapshot: tuple) -> bool:
    return (state.result, list(state.fits)) == snapshot


# ----------------------------------------------------------------------------- bad files
def test_references_of_different_sizes_and_modes_fit(fitted, files):
    out, state = fitted
    scores = out[-2]
    assert isinstance(state, ss.Session) and scores["n_references"] == 2
    assert out[0].size[0] / out[0].size[1] == pytest.approx(300 / 180, rel=0.01)
    assert math.isfinite(scores["sgfr"]["score"]) and scores["sgfr"]["score"] >= 0


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_query_gets_a_specific_message_and_keeps_the_session(app_module, files, fitted, name):
    _, state = fitted
    snapshot = (state.result, list(state.fits))
    t0 = time.perf_counter()
    message = _error(upload_and_detect, app_module, files["refs"], files["bad"][name], state)
    assert name in message and BAD_FILES[name][1].lower() in message.lower(), message
    assert time.perf_counter() - t0 < 5.0  # refused from the header, never decoded
    assert _same_session(state, snapshot)  # the visitor's result and fit are still there


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_reference_gets_a_specific_message(app_module, files, fitted, name):
    _, state = fitted
    snapshot = (state.result, list(state.fits))
    refs = [files["refs"][0], files["bad"][name]]
    message = _error(upload_and_detect, app_module, refs, files["query"], state)
    assert f"reference {name!r}" in message, message
    assert BAD_FILES[name][1].lower() in message.lower(), message
    assert _same_session(state, snapshot)
    # The preview says the same while it shows the good reference.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thumbs = app_module.preview_references(as_refs(app_module, refs))
    assert len(thumbs) == 1
    assert any(name in str(w.message) for w in caught)


def test_query_upload_is_not_decoded_before_the_handler(app_module, files):
    """gradio's Image preprocess would decode (and re-encode) the upload before our limits
    apply: a 9000 x 9000 PNG of a few KB would take ~250 MB and seconds. It must go to the
    handler untouched, which refuses it from the header."""
    huge = files["bad"]["huge.png"]
    t0 = time.perf_counter()
    passed = as_query(app_module, huge)
    assert Path(passed).read_bytes() == huge.read_bytes()
    assert time.perf_counter() - t0 < 0.5


def test_base64_query_from_an_api_client_is_kept_byte_for_byte(app_module, files):
    import base64

    query = _component(app_module, "query")
    data = files["odd"]["16bit"].read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    path = query.preprocess(ImageData(path=None, url=url, orig_name="deep.png"))
    assert Path(path).read_bytes() == data
    pdf = "data:image/png;base64," + base64.b64encode(b"%PDF-1.7\n%%EOF").decode()
    with pytest.raises(gr.Error, match="PDF"):
        query.preprocess(ImageData(path=None, url=pdf, orig_name="scan.png"))


@pytest.mark.parametrize("kind", ["gray", "alpha", "palette", "16bit", "cmyk", "gif", "exif"])
def test_odd_modes_reach_the_handler_as_the_loader_reads_them(app_module, files, kind):
    path = files["odd"][kind]
    _, got = uploads.read_image(as_query(app_module, path), "query")
    want = load_image(path)
    assert got.size == want.size
    diff = np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16))
    assert diff.mean() < 1.0, f"{kind}: the upload was altered before the loader ({diff.mean()})"
    if kind in ("alpha", "palette"):  # transparent half composited onto white, not black
        assert np.asarray(got)[:, :40].mean() > 250
    if kind == "16bit":  # scaled, not clipped to white
        assert np.asarray(got).std() > 10


@pytest.mark.parametrize(
    ("kind", "portrait"), [("16bit", False), ("exif", True), ("wide", False), ("small", False)]
)
def test_odd_queries_run_on_a_fitted_session(app_module, files, fitted, upload_dir, kind, portrait):
    _, state = fitted
    if kind == "wide":  # the most extreme aspect ratio allowed
        path = upload_dir / "wide.png"
        _texture((16 * 12, 16), seed=6).save(path)
    elif kind == "small":  # the smallest side allowed
        path = upload_dir / "small.png"
        _texture((MIN_SIDE, MIN_SIDE), seed=7).save(path)
    else:
        path = files["odd"][kind]
    out = upload_and_detect(app_module, files["refs"], path, state)
    query, heat, scores = out[0], out[1], out[-2]
    assert (query.size[1] > query.size[0]) == portrait  # EXIF orientation respected
    assert heat.size == query.size and scores["fit_reused"]
    assert math.isfinite(scores["sgfr"]["score"])


# ----------------------------------------------------------------------------- references
def test_reference_count_limits(app_module, files, fitted):
    _, state = fitted
    query = files["query"]
    message = _error(app_module.detect, [], str(query), "lite0", 0.25, state, Progress())
    assert "Add 1 to 16" in message
    assert "reference" in _error(app_module.detect, None, str(query), "lite0", 0.25, None)
    # Over the limit: refused from the count alone, without reading a file.
    too_many = [f"/nonexistent/ref_{i}.png" for i in range(uploads.MAX_REFERENCES + 1)]
    message = _error(app_module.detect, too_many, str(query), "lite0", 0.25, state, Progress())
    assert f"{uploads.MAX_REFERENCES + 1} reference images" in message
    assert f"limit is {uploads.MAX_REFERENCES}" in message
    with pytest.warns(UserWarning, match=f"at most {uploads.MAX_REFERENCES}"):
        app_module.preview_references([str(files["refs"][0])] * (uploads.MAX_REFERENCES + 1))


def test_one_reference_is_enough(app_module, files):
    out = upload_and_detect(app_module, files["refs"][:1], files["query"])
    scores = out[-2]
    assert scores["n_references"] == 1 and not scores["fit_reused"]
    assert math.isfinite(scores["sgfr"]["score"]) and math.isfinite(scores["sgfr"]["p_value"])


def test_no_query_or_no_references_yet(app_module, files):
    message = _error(app_module.detect, [str(p) for p in files["refs"]], None, "lite0", 0.25, None)
    assert "query" in message.lower()
    assert "reference" in _error(app_module.detect, [], str(files["query"]), "auto", 0.25, None)


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_threshold_must_be_a_finite_number(app_module, fitted, value):
    _, state = fitted
    before = state.result.threshold
    message = _error(app_module.set_threshold, value, state)
    assert "threshold" in message.lower()
    assert state.result.threshold == before


@pytest.mark.parametrize(("x", "y"), [(None, 3.0), (3.0, None), (math.nan, 1.0)])
def test_patch_coordinates_must_be_numbers(app_module, fitted, x, y):
    _, state = fitted
    patch = state.result.patch
    message = _error(app_module.inspect, x, y, state)
    assert "coordinate" in message.lower() or "number" in message.lower(), message
    assert state.result.patch == patch


def test_patch_coordinates_outside_the_image_pick_the_border(app_module, fitted):
    _, state = fitted
    out = app_module.inspect(-1e9, 1e9, state)
    grid = state.result.pred.grid
    assert out[-2]["patch"]["row"] == grid[0] - 1 and out[-2]["patch"]["col"] == 0


# ----------------------------------------------------------------------------- fuzz
def _seed_files() -> list[bytes]:
    img = _texture((48, 40), seed=9)
    return [_encode(img, "PNG"), _encode(img, "JPEG", quality=80), _encode(img, "GIF")]


SEEDS = _seed_files()


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            data = data[:i]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(st.binary(max_size=512), _mutated()))
def test_fuzz_uploads_through_the_handlers(app_module, received, data):
    """Whatever the bytes: a thumbnail, or a warning / error that names the file."""
    path = received("fuzz") / "upload.png"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thumbs = app_module.preview_references(as_refs(app_module, [path]))
    named = [w for w in caught if str(w.message).startswith("reference 'upload.png': ")]
    assert len(thumbs) == 1 or named
    try:
        query = as_query(app_module, path)
        uploads.read_image(query, "query 'upload.png'")
    except gr.Error as err:
        assert "upload.png" in str(err)
    except ValueError as err:  # ImageError: what the handler turns into its message
        assert str(err).startswith("query 'upload.png': ")


# ----------------------------------------------------------------------------- CLI
def _cli(argv, capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_cli_refuses_bad_files_with_one_message(files, tmp_path, capsys, name):
    bad, good = files["bad"][name], files["refs"][0]
    for normals, query in (([good], bad), ([good, bad], files["query"])):
        out = tmp_path / "out"
        argv = ["predict", "--normals", *normals, "--query", query, "--out", out, "-q"]
        code, err = _cli(argv, capsys)
        assert code == 2, err
        assert name in err and BAD_FILES[name][1].lower() in err.lower(), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_cli_refuses_an_empty_reference_folder(files, tmp_path, capsys):
    empty = tmp_path / "normals"
    empty.mkdir()
    argv = ["predict", "--normals", empty, "--query", files["query"], "--out", tmp_path / "o"]
    code, err = _cli(argv, capsys)
    assert code == 2 and str(empty) in err and "Traceback" not in err
