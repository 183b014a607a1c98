"""Pose geometry and pose maps of the ControlNet augmenter (no diffusers needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from age_reenact.augment.pose3d import TEMPLATE_3D, estimate_pose, euler_angles, repose, rotation_matrix, target_landmarks
from age_reenact.augment.pose_maps import MEDIAPIPE_COLORS, draw_pose_map, draw_pose_maps, pupils
from age_reenact.face.align import similarity_transform, transform_points
from age_reenact.face.mean_shape import MEAN_SHAPE_68
from age_reenact.face.templates import AGETRANSGAN, five_points_from_68

NOSE = 30


def frontal(size: int = 512) -> np.ndarray:
    """The mean shape moved from its 112 px frame into a `size` px crop, 80 % as large so the chin fits."""
    return (MEAN_SHAPE_68 - 56.0) * (0.8 * size / 112.0) + size / 2.0


def components(mask: np.ndarray) -> int:
    """4-connected components of a boolean image (small images only)."""
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


@pytest.mark.parametrize("yaw", [20.0, 45.0, -30.0])
def test_yaw_edit_moves_the_nose_toward_the_turned_side(yaw):
    source = frontal()
    turned = repose(source, rotation_matrix(yaw, 0, 0))
    face_centre = source[:17].mean(0)[0]
    shift = turned[NOSE, 0] - source[NOSE, 0]
    assert np.sign(shift) == np.sign(yaw) and abs(shift) > 0.05 * 512 * abs(np.sin(np.radians(yaw)))
    # The nose moves further than the face outline: it is in front of it.
    assert abs(turned[NOSE, 0] - turned[:17].mean(0)[0]) > abs(source[NOSE, 0] - face_centre) + 10
    # The far side of the face narrows: the eye on the turned-to side comes closer to the nose.
    eye = 42 if yaw > 0 else 36
    assert abs(turned[eye:eye + 6].mean(0)[0] - turned[NOSE, 0]) < abs(source[eye:eye + 6].mean(0)[0] - source[NOSE, 0])


def test_pitch_and_roll_edits_move_the_nose_up_and_turn_clockwise():
    source = frontal()
    up = repose(source, rotation_matrix(0, 20, 0))
    assert up[NOSE, 1] < source[NOSE, 1] - 5
    rolled = repose(source, rotation_matrix(0, 0, 15))
    eye_line = rolled[42:48].mean(0) - rolled[36:42].mean(0)
    assert np.degrees(np.arctan2(eye_line[1], eye_line[0])) == pytest.approx(15, abs=1.0)


def test_angles_round_trip_and_pose_is_recovered_from_landmarks():
    for angles in [(10, -5, 3), (-35, 12, -8), (60, 0, 0)]:
        assert euler_angles(rotation_matrix(*angles)) == pytest.approx(angles, abs=1e-6)
        estimated = estimate_pose(repose(frontal(), rotation_matrix(*angles))).angles
        assert estimated == pytest.approx(angles, abs=1.5)
    assert estimate_pose(frontal()).angles == pytest.approx((0, 0, 0), abs=0.5)


def test_template_reproduces_agetransgan_half_profile_template():
    """Fact check of the depth profile: at the right yaw, the re-posed mean shape's 5 points fit
    AgeTransGAN's half-profile and profile crop templates to about a pixel (of 112)."""
    for index, yaw in ((3, 51), (4, 78)):
        points = five_points_from_68(repose(MEAN_SHAPE_68, rotation_matrix(yaw, 0, 0)))
        template = AGETRANSGAN.templates[index]
        residual = np.abs(transform_points(similarity_transform(points, template), points) - template).max()
        assert residual < 1.5
    assert TEMPLATE_3D.shape == (68, 3) and np.argmax(TEMPLATE_3D[:, 2]) == NOSE


def test_target_landmarks_relative_absolute_and_driving():
    source = repose(frontal(), rotation_matrix(-20, 0, 0))
    _, angles = target_landmarks(source[None], yaw=30, relative=True)
    assert angles[0] == pytest.approx((10, 0, 0), abs=1.5)
    _, angles = target_landmarks(source[None], yaw=30, relative=False)
    assert angles[0] == pytest.approx((30, 0, 0), abs=1e-6)
    driving = repose(frontal(), rotation_matrix(25, 10, 0))
    for mode in ("pose", "landmarks"):
        out, angles = target_landmarks(source[None], driving=driving[None], driving_mode=mode)
        assert angles[0][:2] == pytest.approx((25, 10), abs=2.0)
        assert out[0].mean(0) == pytest.approx(source.mean(0), abs=1.0)  # stays where the source face is
    out, angles = target_landmarks(np.full((1, 68, 2), np.nan), yaw=10)
    assert np.isnan(out).all() and np.isnan(angles).all()
    with pytest.raises(ValueError, match="68 iBUG"):
        estimate_pose(frontal()[:5])


def test_openpose_face_map_is_70_white_dots():
    image = draw_pose_map(frontal(512), 512, "openpose_face")
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    colours = set(map(tuple, image.reshape(-1, 3)))
    assert colours == {(0, 0, 0), (255, 255, 255)}
    assert components(image[..., 0] > 0) == 70  # 68 points + 2 pupils, radius 3: none touch at 512 px
    dot = image[int(round(frontal()[NOSE, 1])) - 5: int(round(frontal()[NOSE, 1])) + 6, int(round(frontal()[NOSE, 0])) - 5: int(round(frontal()[NOSE, 0])) + 6, 0] > 0
    assert 20 <= dot.sum() <= 37  # a filled disc of radius 3


def test_dlib68_map_is_68_white_dots():
    image = draw_pose_map(frontal(512), 512, "dlib68")
    assert set(map(tuple, image.reshape(-1, 3))) == {(0, 0, 0), (255, 255, 255)}
    assert components(image[..., 0] > 0) == 68


def test_mediapipe_face_map_uses_the_annotator_colours():
    landmarks = frontal(512)
    image = draw_pose_map(landmarks, 512, "mediapipe_face")
    colours = set(map(tuple, image.reshape(-1, 3))) - {(0, 0, 0)}
    assert colours == set(MEDIAPIPE_COLORS.values())
    # Subject's right (image left) eye and pupil in their colours; the pupils are 4x4 squares.
    right_pupil, left_pupil = pupils(landmarks)
    for centre, name in ((right_pupil, "right_pupil"), (left_pupil, "left_pupil")):
        x, y = np.round(centre).astype(int)
        patch = image[y - 4: y + 5, x - 4: x + 5]
        assert (patch == MEDIAPIPE_COLORS[name]).all(-1).sum() == 16
    assert (image[:, :256] == MEDIAPIPE_COLORS["right_eye"]).all(-1).any()
    assert not (image[:, 256:] == MEDIAPIPE_COLORS["right_eye"]).all(-1).any()
    # Contours are 2 px lines: the oval crosses the vertical midline twice (chin, forehead), 2 px each.
    column = (image[:, 256] == MEDIAPIPE_COLORS["face_oval"]).all(-1)
    assert components(column[:, None]) == 2 and column.sum() <= 6
    forehead = np.flatnonzero(column).min()
    assert forehead < landmarks[17:27, 1].min() - 40  # the oval closes above the brows


def test_maps_scale_with_size_skip_outside_points_and_batch():
    small = draw_pose_map(frontal(128), 128, "openpose_face")
    assert components(small[..., 0] > 0) <= 70 and small.any()
    shifted = frontal(512) + np.array([300.0, 0.0])  # right half of the face falls off the canvas
    image = draw_pose_map(shifted, 512, "dlib68")
    assert 0 < components(image[..., 0] > 0) < 68
    batch = draw_pose_maps(np.stack([frontal(64), np.full((68, 2), np.nan)]), 64, "mediapipe_face")
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == torch.float32
    assert batch[0].max() > 0 and batch[1].max() == 0  # no face: a black map
    with pytest.raises(ValueError, match="style"):
        draw_pose_map(frontal(), 64, "canny")
