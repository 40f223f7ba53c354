"""ImageBatcher: decoding of every image kind, geometry of the resize, batching rules."""

import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw

from efficientdet_trt.core import resize_kernel
from efficientdet_trt.core.common import UserError
from image_batcher import (
    AUTOML,
    IMAGENET_MEAN_RGB,
    NVIDIA,
    PAD_COLOR,
    ImageBatcher,
    ImageInfo,
    Preprocessing,
    fit_image,
    list_images,
    load_rgb,
    pad_around,
    resize_bilinear_tf,
)


def solid(path, mode, value, size=(40, 30)):
    Image.new(mode, size, value).save(path)
    return path


def test_every_image_mode_becomes_the_right_rgb(tmp_path):
    cases = {
        "gray.png": (solid(tmp_path / "gray.png", "L", 77), (77, 77, 77)),
        "rgba.png": (solid(tmp_path / "rgba.png", "RGBA", (10, 20, 30, 128)), (10, 20, 30)),
        "cmyk.jpg": (solid(tmp_path / "cmyk.jpg", "CMYK", (0, 0, 0, 0)), (255, 255, 255)),
        "palette.png": (solid(tmp_path / "palette.png", "P", 3), None),
        "la.png": (solid(tmp_path / "la.png", "LA", (200, 255)), (200, 200, 200)),
    }
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(np.full((30, 40), 65535, np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    cases["sixteen.png"] = (sixteen, (255, 255, 255))
    for name, (path, expected) in cases.items():
        image, size = load_rgb(path)
        assert image.mode == "RGB" and size == (40, 30), name
        if expected is not None:
            assert np.abs(np.asarray(image)[5, 5].astype(int) - expected).max() <= 2, name


def test_sixteen_bit_keeps_gradations(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))).save(path)
    row = np.asarray(load_rgb(path)[0])[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and len(np.unique(row)) > 200


def test_list_images_is_sorted_case_insensitive_and_can_recurse(tmp_path):
    for name in ("b.JPG", "a.png", "c.Jpeg", "d.bmp", "notes.txt"):
        solid(tmp_path / name, "RGB", (1, 2, 3)) if not name.endswith(".txt") else (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    solid(tmp_path / "sub" / "e.png", "RGB", (1, 2, 3))
    assert [p.split("/")[-1] for p in list_images(str(tmp_path))] == ["a.png", "b.JPG", "c.Jpeg", "d.bmp"]
    assert list_images(str(tmp_path), recursive=True)[-1].endswith("sub/e.png")


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no .jpg"):
        ImageBatcher(str(tmp_path), (64, 64), "NHWC")


def test_corrupt_and_truncated_files_are_skipped_with_a_warning(tmp_path, caplog):
    solid(tmp_path / "a_good.png", "RGB", (9, 9, 9), size=(32, 32))
    (tmp_path / "b_corrupt.jpg").write_bytes(b"this is not a jpeg")
    full = tmp_path / "full.jpg"
    Image.new("RGB", (200, 200), (1, 2, 3)).save(full)
    (tmp_path / "c_truncated.jpg").write_bytes(full.read_bytes()[:300])
    full.unlink()
    batcher = ImageBatcher(str(tmp_path), (32, 32), "NHWC", batch_size=4)
    with caplog.at_level(logging.WARNING):
        batches = list(batcher)
    assert len(batches) == 1
    array, infos = batches[0]
    assert [i.path.split("/")[-1] for i in infos] == ["a_good.png"]
    assert np.all(array[1:] == 0) and np.all(array[0, :, :, :] == 9)
    assert "b_corrupt.jpg" in caplog.text and "c_truncated.jpg" in caplog.text
    assert "skipped 2 unreadable" in caplog.text


@pytest.mark.parametrize("preprocessing,pad", [(Preprocessing.for_model(NVIDIA), PAD_COLOR),
                                               (Preprocessing.for_model(AUTOML, (127, 127, 127)), (127, 127, 127)),
                                               (Preprocessing(), IMAGENET_MEAN_RGB)])
def test_padding_is_mean_colour_bottom_and_right_and_last_batch_zero_padded(tmp_path, preprocessing, pad):
    solid(tmp_path / "wide.png", "RGB", (255, 0, 0), size=(100, 50))
    solid(tmp_path / "tall.png", "RGB", (0, 255, 0), size=(50, 100))
    solid(tmp_path / "x.png", "RGB", (0, 0, 255), size=(64, 64))
    batches = list(ImageBatcher(str(tmp_path), (64, 64), "NCHW", batch_size=2, dtype=np.float16,
                                preprocessing=preprocessing))
    assert [len(infos) for _, infos in batches] == [2, 1]
    first = batches[0][0]
    assert first.dtype == np.float16 and first.shape == (2, 3, 64, 64)
    tall, wide = first[0], first[1]  # sorted: tall.png, wide.png
    pad = np.array(pad, np.float16)[:, None, None]
    assert np.all(wide[:, :32, :] == np.array([255, 0, 0])[:, None, None])
    assert np.all(wide[:, 32:, :] == pad)
    assert np.all(tall[:, :, 32:] == pad)
    assert np.all(batches[1][0][1] == 0)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.float16])
@pytest.mark.parametrize("new_hw", [(40, 50), (48, 50), (40, 64), (48, 64), (0, 0)])
def test_pad_around_fills_all_but_the_image_as_a_broadcast_would(implementation, layout, dtype, new_hw):
    """pad_around writes the padding in the compiled kernel or a row of values at a time; the values and the
    region are those of assigning the colour to every pixel outside the top-left new_h x new_w, into a batch
    slot or a strided view."""
    pad = np.rint(IMAGENET_MEAN_RGB) if np.dtype(dtype).kind == "u" else np.array(IMAGENET_MEAN_RGB)
    new_h, new_w = new_hw
    shape = (48, 64, 3) if layout == "NHWC" else (3, 48, 64)
    for out in (np.zeros(shape, dtype), np.zeros((2, *shape), dtype)[1, ...], np.zeros((*shape, 2), dtype)[..., 0]):
        expected = out.copy()
        view = expected if layout == "NHWC" else expected.transpose(1, 2, 0)
        view[new_h:, :] = pad
        view[:new_h, new_w:] = pad
        pad_around(out, layout, new_h, new_w, pad)
        assert np.array_equal(out, expected)


@pytest.mark.parametrize("original", [(640, 480), (480, 640), (333, 500), (1000, 200), (100, 75), (256, 256)])
@pytest.mark.parametrize("model_hw", [(256, 256), (320, 640)])
def test_automl_preprocessing_equals_automl_own_graph(tmp_path, original, model_hw):
    """The automl canvas, normalised, equals what AutoML's serving code makes of the raw image (TensorFlow)."""
    import tensorflow as tf
    from synthetic_images import make_image
    from tensorflow_examples.lite.model_maker.third_party.efficientdet import inference

    mean, std = np.array(IMAGENET_MEAN_RGB), np.array([58.395, 57.12, 57.375])
    image, _ = make_image(*original, seed=7)
    image.save(tmp_path / "a.png")
    array, infos = next(iter(ImageBatcher(str(tmp_path / "a.png"), model_hw, "NHWC",
                                          preprocessing=Preprocessing.for_model(AUTOML, mean))))
    ours = (array[0] - mean.astype(np.float32)) / std.astype(np.float32)
    theirs, scale = inference.image_preprocess(tf.constant(np.asarray(image)), model_hw, list(mean), list(std))
    assert np.abs(ours - theirs.numpy()).max() < 1e-4
    new_h = round(infos[0].scale_y * original[1])
    new_w = round(infos[0].scale_x * original[0])
    assert np.all(theirs.numpy()[new_h:] == 0) and np.all(theirs.numpy()[:, new_w:] == 0)  # TF's padding: ours
    assert np.abs(ours[new_h:]).max(initial=0) == 0 and np.abs(ours[:, new_w:]).max(initial=0) == 0


# (width, height): landscape, portrait, smaller and larger than the model, square, 1x1, very thin.
TFOD_SIZES = [(800, 600), (600, 800), (1920, 1080), (300, 200), (200, 300), (512, 512), (1, 1), (1000, 37)]


@pytest.mark.parametrize("original", TFOD_SIZES)
@pytest.mark.parametrize("size", [512, 384])
def test_tfod_preprocessing_equals_the_object_detection_apis_own(tmp_path, original, size):
    """The tfod canvas, normalised, equals what a TFOD EfficientDet's SSD preprocess makes of the raw image,
    run by TensorFlow: the feature extractor's normalisation, then the keep_aspect_ratio_resizer
    (core/preprocessor.resize_to_range with min = max dimension), whose zero padding is the mean colour."""
    import os

    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # the API's stale protobuf modules
    import tensorflow as tf
    from object_detection.core import preprocessor
    from object_detection.models.ssd_efficientnet_bifpn_feature_extractor import (
        SSDEfficientNetBiFPNKerasFeatureExtractor as Extractor,
    )
    from synthetic_images import make_image

    image, _ = make_image(*original, seed=11)
    image.save(tmp_path / "a.png")
    preprocessing = Preprocessing.for_model("auto", IMAGENET_MEAN_RGB, family="tfod")
    array, infos = next(iter(ImageBatcher(str(tmp_path / "a.png"), (size, size), "NHWC",
                                          preprocessing=preprocessing)))
    normalised = Extractor.preprocess(None, tf.cast(tf.constant(np.asarray(image))[None], tf.float32))[0]
    theirs, _ = preprocessor.resize_to_range(normalised, min_dimension=size, max_dimension=size,
                                             pad_to_max_dimension=True)
    ours = (array[0] / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.abs(ours - theirs.numpy()).max() <= 1e-4
    resized = [round(infos[0].scale_y * original[1]), round(infos[0].scale_x * original[0])]
    assert np.all(theirs.numpy()[resized[0]:] == 0) and np.all(theirs.numpy()[:, resized[1]:] == 0)
    assert np.abs(ours[resized[0]:]).max(initial=0) < 1e-6 and np.abs(ours[:, resized[1]:]).max(initial=0) < 1e-6


@pytest.fixture(params=["compiled", "numpy"])
def implementation(request, monkeypatch):
    """resize_bilinear_tf's two implementations: the Numba kernel (efficientdet_trt.core.resize_kernel) and
    the NumPy formulation used where Numba is not installed."""
    if request.param == "numpy":
        monkeypatch.setattr(resize_kernel, "compiled", lambda: None)
    elif resize_kernel.compiled() is None:
        pytest.skip("numba is not installed (requirements.txt lists it)")
    return request.param


def test_the_compiled_taps_are_numpys():
    """The kernel computes each image's taps itself (no NumPy calls holding the GIL): the same source indices
    and float32 weights as _bilinear_taps, for every size pair up to 64 and big ones, both centre kinds."""
    from image_batcher import _bilinear_taps

    kernels = resize_kernel.compiled()
    if kernels is None:
        pytest.skip("numba is not installed (requirements.txt lists it)")
    pairs = [(a, b) for a in range(1, 65) for b in range(1, 65)] + [(480, 384), (2000, 341), (6000, 4000),
                                                                  (333, 1536), (4032, 1536), (1080, 1919)]
    for in_size, out_size in pairs:
        for half_pixel in (True, False):
            ours = kernels.taps(in_size, out_size, half_pixel)
            theirs = _bilinear_taps(in_size, out_size, half_pixel)
            for a, b in zip(ours, theirs):
                assert a.dtype == b.dtype and np.array_equal(a, b), (in_size, out_size, half_pixel)


def test_legacy_bilinear_resize_is_tf1s_to_the_bit(implementation):
    import tensorflow as tf

    pixels = np.random.default_rng(1).integers(0, 256, (480, 640, 3)).astype(np.uint8)
    for out_hw in [(384, 512), (512, 683), (3, 4)]:
        theirs = tf.compat.v1.image.resize_bilinear(tf.cast(pixels, tf.float32)[None], out_hw,
                                                    half_pixel_centers=False).numpy()[0]
        assert np.array_equal(resize_bilinear_tf(pixels, *out_hw, half_pixel=False), theirs)


@pytest.mark.parametrize("in_hw,out_hw", [((480, 640), (384, 512)), ((100, 37), (512, 190)), ((7, 9), (3, 4)),
                                          ((2000, 3000), (341, 512)), ((1, 1), (5, 3)), ((9, 1000), (2, 512))])
def test_bilinear_resize_is_tensorflows_to_the_bit(implementation, in_hw, out_hw):
    """From an array and from a PIL image (whose used rows are read by crops when it shrinks more than 2x),
    into a new array and into the top-left of bigger float32 slots, NHWC and NCHW; uint8 slots get TF's
    values rounded half to even."""
    import tensorflow as tf

    pixels = np.random.default_rng(0).integers(0, 256, (*in_hw, 3)).astype(np.uint8)
    theirs = tf.image.resize(tf.cast(pixels, tf.float32), out_hw, method="bilinear").numpy()
    assert np.array_equal(resize_bilinear_tf(pixels, *out_hw), theirs)
    assert np.array_equal(resize_bilinear_tf(Image.fromarray(pixels), *out_hw), theirs)  # read in place
    block_size = Image.core.get_block_size()
    try:
        Image.core.set_block_size(4096)  # rows in several blocks: not exportable, read by crops or a copy
        assert np.array_equal(resize_bilinear_tf(Image.fromarray(pixels), *out_hw), theirs)
    finally:
        Image.core.set_block_size(block_size)
    height, width = out_hw[0] + 2, out_hw[1] + 3
    for dtype, expected in ((np.float32, theirs), (np.uint8, np.rint(theirs).astype(np.uint8))):
        for layout, shape in (("NHWC", (height, width, 3)), ("NCHW", (3, height, width))):
            slot = np.full(shape, 7, dtype)
            got = resize_bilinear_tf(pixels, *out_hw, out=slot, layout=layout)
            assert got.dtype == dtype and np.array_equal(got, expected), (layout, dtype)
            hwc = slot if layout == "NHWC" else slot.transpose(1, 2, 0)
            assert np.all(hwc[out_hw[0]:] == 7) and np.all(hwc[:, out_hw[1]:] == 7)  # only the top-left written


@pytest.mark.parametrize("original", [(1000, 300), (300, 1000), (100, 80), (640, 480), (512, 512), (37, 1200)])
@pytest.mark.parametrize("model_hw", [(256, 256), (256, 384), (384, 256)])
def test_boxes_map_back_to_original_pixels(tmp_path, original, model_hw):
    """A rectangle drawn at a known place is found where to_original says, in any geometry."""
    width, height = original
    box = (round(width * 0.3), round(height * 0.4), round(width * 0.7), round(height * 0.9))
    image = Image.new("RGB", original, (0, 0, 0))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255))
    path = tmp_path / "shape.png"
    image.save(path)
    array, infos = next(iter(ImageBatcher(str(path), model_hw, "NHWC")))
    mask = array[0, :, :, 0] > 127
    ys, xs = np.nonzero(mask)
    found = np.array([[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]], np.float64)
    mapped = infos[0].to_original(found)[0]
    expected = np.array([box[1], box[0], box[3], box[2]], np.float64)
    tolerance = np.array([1 / infos[0].scale_y, 1 / infos[0].scale_x] * 2) + 1e-6
    assert np.all(np.abs(mapped - expected) <= tolerance), (mapped, expected)


def test_to_original_inverts_the_scales_exactly_and_clips():
    info = ImageInfo("x", width=1000, height=300, scale_x=0.256, scale_y=256 / 300 * 0.3)
    original = np.array([[30.0, 100.0, 290.0, 900.0]])
    model = original * np.array([info.scale_y, info.scale_x, info.scale_y, info.scale_x])
    assert np.allclose(info.to_original(model), original, atol=1e-9)
    assert np.allclose(info.to_original([[-5, -5, 1e6, 1e6]]), [[0, 0, 300, 1000]])


def test_fit_image_matches_batcher(tmp_path):
    path = solid(tmp_path / "a.png", "RGB", (5, 6, 7), size=(90, 45))
    canvas, sx, sy = fit_image(Image.open(path), 64, 64)
    array, infos = next(iter(ImageBatcher(str(path), (64, 64), "NHWC", dtype=np.uint8)))
    assert np.array_equal(canvas, array[0]) and (sx, sy) == (infos[0].scale_x, infos[0].scale_y)


def test_worker_count_does_not_change_results_and_shuffle_is_seeded(tmp_path):
    from synthetic_images import write_images

    write_images(str(tmp_path), 11, 120, 90, seed=3, ext="jpg")
    one = list(ImageBatcher(str(tmp_path), (64, 96), "NCHW", batch_size=4, workers=1))
    many = list(ImageBatcher(str(tmp_path), (64, 96), "NCHW", batch_size=4, workers=4, prefetch=3))
    assert len(one) == len(many) == 3
    for (a, ia), (b, ib) in zip(one, many):
        assert np.array_equal(a, b) and [i.path for i in ia] == [i.path for i in ib]
    order = lambda seed: [i.path for _, infos in ImageBatcher(str(tmp_path), (32, 32), "NHWC", 4, shuffle=True,
                                                              seed=seed, exact_batches=True) for i in infos]
    assert order(1) == order(1) != order(2)
    assert len(order(1)) == 8


def test_exact_batches_stay_full_when_images_are_skipped(tmp_path):
    for i in range(6):
        solid(tmp_path / f"{i}.png", "RGB", (i, i, i))
    (tmp_path / "2.png").write_bytes(b"broken")
    batches = list(ImageBatcher(str(tmp_path), (16, 16), "NHWC", batch_size=2, exact_batches=True))
    assert [len(infos) for _, infos in batches] == [2, 2]
    assert all(len(array) == 2 for array, _ in batches)
    assert [i.path.split("/")[-1] for _, infos in batches for i in infos] == ["0.png", "1.png", "3.png", "4.png"]


def test_fewer_images_than_one_calibration_batch_is_an_error(tmp_path):
    solid(tmp_path / "a.png", "RGB", (1, 1, 1))
    with pytest.raises(UserError, match="fewer images than one batch of 8"):
        ImageBatcher(str(tmp_path), (16, 16), "NHWC", batch_size=8, exact_batches=True)


def test_draft_decode_is_close_and_maps_the_same(tmp_path):
    from synthetic_images import make_image

    image, _ = make_image(2400, 1600, seed=5)
    path = tmp_path / "big.jpg"
    image.save(path, quality=92)
    # NVIDIA's Pillow resize averages like the reduced decode does; AutoML's (no antialiasing) samples.
    nvidia = Preprocessing.for_model(NVIDIA)
    full, full_info = next(iter(ImageBatcher(str(path), (256, 256), "NHWC", preprocessing=nvidia)))
    fast, fast_info = next(iter(ImageBatcher(str(path), (256, 256), "NHWC", draft=True, preprocessing=nvidia)))
    assert (full_info[0].scale_x, full_info[0].scale_y) == (fast_info[0].scale_x, fast_info[0].scale_y)
    assert (full_info[0].width, full_info[0].height) == (2400, 1600)
    assert np.abs(full - fast).mean() < 2.0


@pytest.mark.parametrize("draft", [False, True])
def test_exif_orientation_is_applied(tmp_path, draft):
    """A phone photo stored 800x400 with orientation 6 (rotate 90 clockwise to display) is read upright, 400x800."""
    stored = Image.new("RGB", (800, 400), (0, 0, 255))
    ImageDraw.Draw(stored).rectangle([0, 0, 99, 99], fill=(255, 0, 0))  # stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)

    image, original = load_rgb(str(path), (128, 128) if draft else None)
    assert original == (400, 800)
    pixels = np.asarray(image, np.int32)
    assert pixels.shape[0] > pixels.shape[1]  # upright: taller than wide
    corner = pixels[: pixels.shape[0] // 16, -pixels.shape[1] // 8:]  # displayed top-right corner
    assert np.abs(corner - [255, 0, 0]).max() < 40

    batch, infos = next(iter(ImageBatcher(str(path), (128, 128), "NHWC", draft=draft)))
    assert (infos[0].width, infos[0].height) == (400, 800)
    assert infos[0].scale_x == pytest.approx(infos[0].scale_y, rel=0.02)
    assert np.abs(batch[0, :6, 58:62] - [255, 0, 0]).max() < 40  # red at the fitted image's top-right
    padding = batch[0, :, 65:].reshape(-1, 3)  # the fitted image is 64 wide; the rest is padding
    assert padding.std(axis=0).max() < 1


@pytest.mark.parametrize("in_hw,out_hw", [((480, 640), (384, 512)), ((1080, 1920), (288, 512)), ((1200, 37), (512, 16)),
                                          ((100, 100), (30, 90)), ((100, 50), (50, 25)), ((300, 100), (150, 50)),
                                          ((1, 1), (512, 512)), ((77, 333), (118, 512)), ((64, 64), (64, 64)),
                                          ((3000, 4000), (384, 512)), ((512, 700), (512, 300))])
def test_pillow_resize_model_is_pillows_to_the_bit(in_hw, out_hw):
    """engine/pillow_resize.py, the `nvidia` method's arithmetic the GPU kernel runs (coefficient tables, pass
    order, integer passes), is Pillow's own Image.resize(BILINEAR), here in NumPy: shrinking, enlarging, the
    height shrunk much more than the width (Pillow 13 runs the vertical pass first) and equal sizes."""
    from efficientdet_trt.engine import pillow_resize

    pixels = np.random.default_rng(in_hw[0] * 7 + out_hw[1]).integers(0, 256, (*in_hw, 3)).astype(np.uint8)
    theirs = np.asarray(Image.fromarray(pixels).resize(out_hw[::-1], Image.BILINEAR))
    assert np.array_equal(pillow_resize.resize(pixels, out_hw[1], out_hw[0]), theirs)


def test_pillow_pixels_are_the_images_own_and_outlive_it():
    """The resize reads a decoded photo in place (pillow_pixels, through Pillow's Arrow export) instead of
    copying it out: the view holds the image's RGB values and keeps its memory alive after the image is gone;
    images Pillow cannot export so (several blocks, other modes) get None and are copied as before."""
    import gc

    from efficientdet_trt.core import pillow_pixels

    pixels = np.random.default_rng(4).integers(0, 256, (48, 64, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    view = pillow_pixels.rgbx_rows(image)
    assert view is not None and view.shape == (48, 64 * 4) and view.dtype == np.uint8
    del image
    gc.collect()
    Image.new("RGB", (64, 48), (1, 2, 3)).load()  # memory freed too early would be reused here
    assert np.array_equal(view.reshape(48, 64, 4)[:, :, :3], pixels)
    block_size = Image.core.get_block_size()
    try:
        Image.core.set_block_size(1 << 20)
        assert pillow_pixels.rgbx_rows(Image.new("RGB", (640, 480))) is None  # 1.2 MB: more than one block
    finally:
        Image.core.set_block_size(block_size)
    assert pillow_pixels.rgbx_rows(Image.new("L", (4, 4))) is None


def test_a_photo_over_pillows_block_size_is_resized_in_place_with_the_same_values(tmp_path):
    """A 4.3 MP photo takes 17 MB in Pillow's RGBX, over its default 16 MB block size: load_rgb raises the
    block size first, so the photo is decoded into one block and the resize reads it in place; the values are
    those of the resize of a copy of its pixels."""
    from efficientdet_trt.core import pillow_pixels

    Image.core.set_block_size(16 << 20)  # Pillow's default, whatever earlier tests decoded
    y, x = np.mgrid[0:1800, 0:2400]
    pixels = np.stack([x % 251, y % 241, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=90)
    image, size = load_rgb(tmp_path / "big.jpg")
    assert size == (2400, 1800)
    assert Image.core.get_block_size() >= 2400 * 1800 * 4
    assert pillow_pixels.rgbx_rows(image) is not None
    in_place = resize_bilinear_tf(image, 384, 512)
    assert np.array_equal(in_place, resize_bilinear_tf(np.asarray(image), 384, 512))
