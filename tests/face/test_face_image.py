"""Input handling: gray, RGBA, 16-bit, float, tensors, tiny and corrupt images, and image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniid_core.errors import FaceDetectionError
from uniid_core.face.image import MIN_SIDE, load_image, to_rgb_uint8


def test_rgb_uint8_is_copied_unchanged() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = to_rgb_uint8(rgb)
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
    assert np.array_equal(out, rgb)


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 1)])
def test_gray_becomes_three_equal_channels(shape: tuple[int, ...]) -> None:
    gray = np.arange(40 * 50, dtype=np.uint32).reshape(shape[:2]) % 256
    out = to_rgb_uint8(gray.astype(np.uint8).reshape(shape))
    assert out.shape == (40, 50, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.array_equal(out[..., 0], gray.astype(np.uint8))


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255
    rgba[20:, :, 3] = 0
    out = to_rgb_uint8(rgba)
    assert out.shape == (40, 40, 3)
    assert out[:20].tolist() == [[[200, 0, 0]] * 40] * 20
    assert (out[20:] == 255).all()
    assert (to_rgb_uint8(rgba, alpha_background=0)[20:] == 0).all()


def test_gray_alpha_is_composited() -> None:
    la = np.zeros((40, 40, 2), np.uint8)
    la[..., 0] = 100
    la[..., 1] = 128
    out = to_rgb_uint8(la)
    assert out.shape == (40, 40, 3)
    assert abs(int(out[0, 0, 0]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1


def test_16_bit_is_scaled_down() -> None:
    img = np.zeros((40, 40, 3), np.uint16)
    img[0, 0] = (65535, 32768, 257)
    out = to_rgb_uint8(img)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 128, 1]


def test_float_in_unit_range_like_comfyui() -> None:
    img = np.zeros((40, 40, 3), np.float32)
    img[0, 0] = (1.0, 0.5, 0.0)
    img[0, 1] = (1.02, -0.01, 0.2)
    out = to_rgb_uint8(img)
    assert out[0, 0].tolist() == [255, 128, 0]
    assert out[0, 1].tolist() == [255, 0, 51]


def test_torch_tensor_and_batch_of_one() -> None:
    torch = pytest.importorskip("torch")
    img = torch.zeros(1, 40, 48, 3)
    img[0, 0, 0, 0] = 1.0
    out = to_rgb_uint8(img)
    assert out.shape == (40, 48, 3) and out[0, 0].tolist() == [255, 0, 0]
    assert to_rgb_uint8(torch.zeros(40, 48, 3, dtype=torch.bfloat16)).shape == (40, 48, 3)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((MIN_SIDE - 1, 200, 3), np.uint8), "at least 32 px"),
        (np.zeros((200, 20), np.uint8), "at least 32 px"),
        (np.zeros((0, 0, 3), np.uint8), "at least 32 px"),
        (np.zeros((40, 40, 5), np.uint8), "channels"),
        (np.zeros((2, 3, 40, 40, 3), np.uint8), "shape"),
        (np.full((40, 40, 3), np.nan, np.float32), "NaN"),
        (np.full((40, 40, 3), 200.0, np.float32), "expected [0, 1]"),
        (np.full((40, 40, 3), -5, np.int32), "not 8- or 16-bit"),
        (np.full((40, 40, 3), 1 + 1j), "unsupported pixel type"),
        (np.array([["a"] * 40] * 40), "unsupported pixel type"),
    ],
)
def test_bad_arrays_are_refused_clearly(array: np.ndarray, words: str) -> None:
    with pytest.raises(FaceDetectionError) as info:
        to_rgb_uint8(array)
    assert words in str(info.value)


def test_load_image_formats(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(load_image(tmp_path / "rgb.png"), rgb)

    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").shape == (48, 64, 3)

    rgba = np.dstack([rgb, np.zeros((48, 64), np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert (load_image(tmp_path / "rgba.png") == 255).all()

    deep = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.array_equal(load_image(tmp_path / "deep.png")[..., 0], rgb[..., 0])

    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (48, 64, 3)


def test_load_image_applies_exif_rotation(tmp_path: Path) -> None:
    rgb = np.zeros((40, 80, 3), np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (80, 40, 3)


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FaceDetectionError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(FaceDetectionError, match="corrupt"):
        load_image(tmp_path / "junk.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FaceDetectionError, match="corrupt"):
        load_image(tmp_path / "cut.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(FaceDetectionError, match="at least 32 px"):
        load_image(tmp_path / "tiny.png")


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "thumb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    with pytest.raises(FaceDetectionError) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: image is 8x8 pixels")


def test_an_image_too_large_to_open_safely_is_refused_clearly(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then past PIL's bomb limit
    with pytest.raises(FaceDetectionError, match=r"huge.png: it is too large to open safely .*; scale it"):
        load_image(tmp_path / "huge.png")
