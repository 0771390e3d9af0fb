import cv2
import numpy as np
import pytest

from streamer.patches import (
    FLOW_METHODS,
    PatchExtractor,
    PatchSpec,
    channel_planes,
    context_patches,
    extract_patches,
    flow_speed,
    grid_origins,
    motion_energy,
    patch_boxes,
    relative_flow_patches,
    speed_bins,
    to_model_input,
)

from .conftest import synthetic_frames


def test_grid_on_ped2_frames():
    boxes = patch_boxes(240, 360, 30, 15)
    assert len(boxes) == 15 * 23 == 345
    assert boxes[0].tolist() == [0, 0, 30, 30]
    assert boxes[1].tolist() == [15, 0, 30, 30]  # row-major
    assert boxes[-1].tolist() == [330, 210, 30, 30]


def test_last_patch_is_flush_with_the_edge():
    assert grid_origins(100, 30, 15).tolist() == [0, 15, 30, 45, 60, 70]
    assert grid_origins(30, 30, 15).tolist() == [0]
    boxes = patch_boxes(50, 100, 30, 20)
    assert (boxes[:, 0] + boxes[:, 2]).max() == 100 and (boxes[:, 1] + boxes[:, 3]).max() == 50


def test_patches_match_their_boxes():
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (2, 70, 95), dtype=np.uint8)
    patches = extract_patches(planes, 30, 15)
    boxes = patch_boxes(70, 95, 30, 15)
    assert patches.shape == (len(boxes), 2, 30, 30) and patches.dtype == np.uint8 and patches.flags.c_contiguous
    for patch, (x, y, w, h) in zip(patches, boxes):
        assert np.array_equal(patch, planes[:, y : y + h, x : x + w])


def test_diff_channel_is_the_absolute_frame_difference():
    a, b = synthetic_frames(2, speed=3, seed=0)
    ex = PatchExtractor(PatchSpec(motion="diff"))
    first = ex.push(a)
    assert not first[:, 1].any()  # no history yet: a zero difference, not a wait
    second = ex.push(b)
    expected = extract_patches(np.stack([b, cv2.absdiff(a, b)]), 30, 15)
    assert np.array_equal(second, expected)


def test_stack_channels_are_past_frames_oldest_first():
    frames = synthetic_frames(3, speed=3, seed=0)
    ex = PatchExtractor(PatchSpec(motion="stack", depth=3))
    for f in frames:
        out = ex.push(f)
    assert np.array_equal(out, extract_patches(np.stack(frames), 30, 15))


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_flow_channel_measures_speed(method):
    """A textured square moved by 4 px over a textured static background reads about 4 px/frame where it is,
    ~0 on the background. (DIS fills textureless areas from their surroundings, so the background has texture,
    as a camera's scene does; its estimate of a small square is also coarser than Farneback's.)"""
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur(rng.integers(60, 200, (90, 120), dtype=np.uint8), (5, 5), 0)
    square = cv2.GaussianBlur(rng.integers(0, 256, (30, 30), dtype=np.uint8), (3, 3), 0)
    a, b = background.copy(), background.copy()
    a[30:60, 40:70] = square
    b[30:60, 44:74] = square
    tolerance = 1.0 if method == "farneback" else 1.5
    speed = flow_speed(a, b, PatchSpec(motion="flow", flow_scale=1.0, flow_method=method))
    assert speed[40:50, 50:60].mean() == pytest.approx(4.0, abs=tolerance)
    assert speed[:15, :15].mean() < 0.2
    # computed at half size, reported in full-size pixels
    half = flow_speed(a, b, PatchSpec(motion="flow", flow_scale=0.5, flow_method=method))
    assert half.shape == a.shape and half[40:50, 50:60].mean() == pytest.approx(4.0, abs=1.5)


def test_the_specs_farneback_settings_reach_the_flow():
    frames = synthetic_frames(2, speed=6, seed=3)
    planes = []
    for levels, window in [(1, 7), (3, 15)]:
        spec = PatchSpec(motion="flowbins", appearance=False, flow_scale=1.0, flow_levels=levels, flow_window=window)
        planes.append(channel_planes(frames, spec))
        assert np.array_equal(planes[-1], speed_bins(flow_speed(*frames, spec), spec.flow_bins))
    assert not np.array_equal(planes[0], planes[1])
    full_resolution = PatchSpec(motion="flow", flow_scale=1.0)
    pyramid = PatchSpec(motion="flow", flow_scale=1.0, flow_levels=3, flow_window=15)
    assert not np.array_equal(flow_speed(*frames, full_resolution), flow_speed(*frames, pyramid))


def test_speed_bins():
    speed = np.array([[0.2, 0.5, 1.0], [1.5, 2.9, 7.0]], np.float32)
    bins = speed_bins(speed, (0.5, 1.5, 3.0))
    assert bins.shape == (3, 2, 3) and bins.dtype == np.uint8
    assert (bins[0] // 255).tolist() == [[0, 1, 1], [0, 0, 0]]
    assert (bins[1] // 255).tolist() == [[0, 0, 0], [1, 1, 0]]
    assert (bins[2] // 255).tolist() == [[0, 0, 0], [0, 0, 1]]
    spec = PatchSpec(motion="flowbins", flow_bins=(0.5, 1.5, 3.0))
    assert spec.channels == 4 and PatchSpec(motion="flowbins", appearance=False).channels == 3
    patches = np.zeros((2, 4, 30, 30), np.uint8)
    patches[0, 1, :15] = 255  # half the patch in the slow band
    patches[0, 3, 15:] = 255  # the other half in the fast band
    assert motion_energy(patches, spec).tolist() == [255, 0]


def test_model_input_and_energy():
    patches = np.full((3, 2, 30, 30), 255, np.uint8)
    patches[1, 1] = 0
    x = to_model_input(patches)
    assert x.dtype == np.float32 and x.max() == 1.0
    assert motion_energy(patches, PatchSpec(motion="diff")).tolist() == [255, 0, 255]
    assert not motion_energy(patches[:, :1], PatchSpec(motion="none")).any()


def test_frames_are_resized_and_boxes_mapped_back():
    spec = PatchSpec(motion="none", frame_size=(60, 90))
    ex = PatchExtractor(spec)
    big = cv2.resize(synthetic_frames(1, 1, 0)[0], (180, 120))
    assert ex.push(big).shape == (15, 1, 30, 30)
    boxes = ex.boxes(big.shape)
    assert boxes[-1].tolist() == [120, 60, 60, 60]  # the 30 px patch at (60, 30) is 60 px in the original


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(motion="optical"),
        dict(size=1),
        dict(stride=0),
        dict(motion="stack", depth=1),
        dict(frame_size=(20, 90)),
        dict(flow_scale=0),
        dict(flow_levels=0),
        dict(flow_iterations=0),
        dict(flow_window=2),
        dict(flow_method="lucas_kanade"),
        dict(motion="diff", flow_signed=True),
        dict(motion="flowbins", appearance=False, appearance_mask=True),
        dict(motion="stack", context=3),
        dict(context=0),
    ],
)
def test_invalid_specs(kwargs):
    with pytest.raises(ValueError):
        PatchSpec(**kwargs)


def test_spec_round_trip():
    spec = PatchSpec(motion="flow", frame_size=(240, 360), flow_levels=3, flow_window=15, flow_method="dis_fast")
    assert PatchSpec.from_dict(spec.to_dict()) == spec
    new_keys = ("flow_levels", "flow_window", "flow_iterations", "flow_method")
    older_card = PatchSpec.from_dict({k: v for k, v in spec.to_dict().items() if k not in new_keys})
    # cards written before these settings: the old flow
    assert (older_card.flow_levels, older_card.flow_method) == (1, "farneback")
    with pytest.raises(ValueError, match="unknown"):
        PatchSpec.from_dict({**spec.to_dict(), "colour": True})


def test_extractor_rejects_non_gray_frames():
    with pytest.raises(ValueError, match="grayscale"):
        PatchExtractor(PatchSpec()).push(np.zeros((60, 90, 3), np.uint8))


def test_motion_only_channels():
    a, b = synthetic_frames(2, speed=3, seed=0)
    spec = PatchSpec(motion="diff", appearance=False)
    assert spec.channels == 1
    ex = PatchExtractor(spec)
    ex.push(a)
    out = ex.push(b)
    assert np.array_equal(out, extract_patches(cv2.absdiff(a, b)[None], 30, 15))
    assert np.allclose(motion_energy(out, spec), out.reshape(len(out), -1).mean(axis=1))
    assert PatchSpec(motion="flow", appearance=False).channels == 1


def test_extra_channels_follow_the_motion_channels_and_leave_the_energy_alone():
    frames = synthetic_frames(2, speed=4, seed=2)
    plain = PatchSpec(motion="flowbins", flow_scale=1.0)
    extended = PatchSpec(motion="flowbins", flow_scale=1.0, flow_signed=True, context=3)
    assert (extended.channels, extended.motion_channels) == (1 + 3 + 2 + 3, slice(1, 4))
    assert PatchSpec(motion="flowbins", appearance=False, context=2).channels == 6
    base, more = PatchExtractor(plain), PatchExtractor(extended)
    for frame in frames:
        a, b = base.push(frame), more.push(frame)
    assert b.shape == (len(a), 9, 30, 30) and np.array_equal(b[:, :4], a)
    np.testing.assert_array_equal(motion_energy(a, plain), motion_energy(b, extended))
    assert PatchSpec.from_dict(extended.to_dict()) == extended


def test_relative_flow_is_zero_for_a_rigid_mover_and_signed_for_parts_moving_apart():
    spec = PatchSpec(motion="flowbins", flow_signed=True, flow_max=8.0)
    flow = np.zeros((2, 30, 30), np.float32)
    flow[0, 5:25, 5:25] = 2.0  # a rigid mover, 2 px/frame to the right
    speed = np.abs(flow[0])
    rigid = relative_flow_patches(flow, speed, spec)[0].astype(int)
    assert (rigid == 128).all()  # no motion relative to itself; still pixels read 128 too
    flow[0, 5:25, 15:25] = 4.0  # its right half now moves twice as fast
    parts = relative_flow_patches(flow, np.abs(flow[0]), spec)[0].astype(int)
    # mean flow of the moving pixels: 3; the halves read -1 and +1 px (127/8 levels per px)
    assert (parts[0, 10, 5:15] == 128 - 16).all() and (parts[0, 10, 15:25] == 128 + 16).all()
    assert parts[0, 0, 0] == 128 and (parts[1] == 128).all()


def test_context_is_the_wider_window_shrunk_to_the_patch_size():
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (2, 90, 120), dtype=np.uint8)
    spec = PatchSpec(motion="flowbins", context=3)
    windows = context_patches(planes, spec)
    boxes = patch_boxes(90, 120, 30, 15)
    assert windows.shape == (len(boxes), 2, 30, 30)
    padded = np.pad(planes, ((0, 0), (90, 90), (90, 90)))  # zeros beyond the frame
    for window, (x, y, _, _) in zip(windows, boxes):
        around = padded[:, y - 30 + 90 : y + 60 + 90, x - 30 + 90 : x + 60 + 90]  # 90 x 90, centred on the patch
        expected = np.stack([cv2.resize(p, (30, 30), interpolation=cv2.INTER_AREA) for p in around])
        np.testing.assert_array_equal(window, expected)


def test_appearance_mask_keeps_the_look_of_moving_pixels_only():
    frames = synthetic_frames(2, speed=4, seed=2)
    spec = PatchSpec(motion="flowbins", flow_scale=1.0, appearance_mask=True)
    planes = channel_planes(frames, spec)
    moving = planes[1:].max(axis=0) > 0
    assert moving.any() and not moving.all()
    assert np.array_equal(planes[0][moving], frames[-1][moving]) and not planes[0][~moving].any()
