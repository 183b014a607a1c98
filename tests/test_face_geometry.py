"""Face geometry: landmarks against hand labels, crop/paste round trips, rotation invariance, batching."""
import math

import numpy as np
import pytest
import torch

from age_reenact.face.align import invert_affine, similarity_transform, transform_points, warp_affine
from age_reenact.face.crop import NoFaceError, crops_from_points, detect_crops, extract_crops
from age_reenact.face.detect import FaceDetector
from age_reenact.face.paste import crop_masks, paste_crops
from age_reenact.face.templates import CONVENTIONS, five_points_from_68


def outer_interocular(points68):
    # 300-W's normalisation: distance between the outer eye corners.
    return float(np.linalg.norm(points68[36] - points68[45]))


@pytest.mark.parametrize("upsample", [0, 2])
def test_68_landmarks_match_hand_labels(einstein, upsample):
    image, labels = einstein
    faces = FaceDetector(upsample=upsample).detect((image[0] * 255).round().byte().numpy())
    centre = labels.mean(0)
    face = next(f for f in faces if f.box[0] < centre[0] < f.box[2] and f.box[1] < centre[1] < f.box[3])
    nme = np.linalg.norm(face.landmarks - labels, axis=1).mean() / outer_interocular(labels)
    assert nme < 0.10, f"NME {nme:.3f}"


def test_5_point_predictor_places_alignment_points(einstein):
    image, labels = einstein
    faces = FaceDetector(upsample=2, landmarks="5").detect((image[0] * 255).round().byte().numpy())
    face = max(faces, key=lambda f: f.area)
    error = np.linalg.norm(face.points5 - five_points_from_68(labels), axis=1).mean() / outer_interocular(labels)
    assert face.landmarks.shape == (5, 2) and error < 0.15


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = math.radians(25), 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = similarity_transform(src, src @ rot.T + shift)
    assert np.allclose(matrix[:, :2], rot) and np.allclose(matrix[:, 2], shift)
    assert np.allclose(transform_points(invert_affine(matrix), transform_points(matrix, src)), src)


def test_warp_then_inverse_warp_round_trips(astronaut):
    frames = astronaut.permute(0, 3, 1, 2)
    angle = math.radians(20)
    # An upscaling rotation about the centre: the inverse warp then only downsamples what it upsampled.
    rot = 1.3 * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = np.hstack([rot, (np.array([256.0, 256.0]) - rot @ np.array([256.0, 256.0]))[:, None]])
    there = warp_affine(frames, matrix[None], (512, 512))
    back = warp_affine(there, invert_affine(matrix)[None], (512, 512), antialias=False)
    centre = (slice(None), slice(None), slice(176, 336), slice(176, 336))
    assert (back[centre] - frames[centre]).abs().mean() < 0.01


@pytest.mark.parametrize("convention,size", [("agetransgan", 256), ("arcface", 224), ("reenactor", 256), ("agetransgan", 1024)])
def test_crop_then_paste_unchanged_gives_back_the_input(astronaut, convention, size):
    face_crop = detect_crops(astronaut, FaceDetector(upsample=0), convention, size)
    crops = extract_crops(astronaut, face_crop)
    assert crops.shape == (1, size, size, 3)
    pasted, mask = paste_crops(astronaut, crops, face_crop)
    difference = (pasted - astronaut).abs()
    # Crops at least as fine as the face in the frame; two bicubic resamplings: stated bound 0.08 max
    # (of 1.0), 0.005 mean inside the mask. (A crop coarser than the face loses detail by design.)
    assert difference.max() < 0.08
    assert difference[0][mask[0] > 0].mean() < 0.005
    assert mask.shape == astronaut.shape[:3] and mask.max() == 1.0


def test_paste_puts_processed_content_inside_the_face_only(astronaut):
    face_crop = detect_crops(astronaut, FaceDetector(upsample=0), "agetransgan", 256)
    white = torch.ones(1, 256, 256, 3)
    pasted, mask = paste_crops(astronaut, white, face_crop)
    x0, y0, x1, y1 = 175, 76, 266, 167  # the detector's face box
    assert pasted[0, (y0 + y1) // 2, (x0 + x1) // 2].min() > 0.99  # face centre replaced
    assert torch.equal(pasted[0, :, :100], astronaut[0, :, :100])  # far from the face: untouched
    assert mask[0, :, :100].max() == 0


def test_alignment_of_a_rotated_face_matches_the_unrotated_one(einstein):
    image, labels = einstein
    h, w = image.shape[1:3]
    angle = math.radians(30)
    centre = labels.mean(0)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rotation = np.hstack([rot, (centre - rot @ centre)[:, None]])
    rotated = warp_affine(image.permute(0, 3, 1, 2), rotation[None], (h, w)).permute(0, 2, 3, 1)
    rotated_labels = transform_points(rotation, labels)
    for convention in CONVENTIONS:
        straight = crops_from_points((h, w), 1, [0], [labels], [five_points_from_68(labels)], convention, 128)
        turned = crops_from_points((h, w), 1, [0], [rotated_labels], [five_points_from_68(rotated_labels)], convention, 128)
        assert np.allclose(straight.crop_landmarks(), turned.crop_landmarks(), atol=1e-6)
        a, b = extract_crops(image, straight), extract_crops(rotated, turned)
        assert (a - b)[:, 16:-16, 16:-16].abs().mean() < 0.02


def test_batch_of_frames_equals_frame_by_frame(astronaut, einstein):
    frames = torch.cat([astronaut, torch.flip(astronaut, dims=[2])])
    detector = FaceDetector(upsample=0)
    batch = detect_crops(frames, detector, "arcface", 112)
    crops = extract_crops(frames, batch)
    for i in range(2):
        single = detect_crops(frames[i : i + 1], detector, "arcface", 112)
        assert np.allclose(single.matrices, batch.matrices[i : i + 1])
        assert torch.allclose(extract_crops(frames[i : i + 1], single), crops[i : i + 1], atol=1e-6)
    pasted, _ = paste_crops(frames, crops.flip(2), batch)
    for i in range(2):
        single = batch.select([i])
        single.frame_index = np.zeros(1, dtype=np.int64)
        single.num_frames = 1
        one, _ = paste_crops(frames[i : i + 1], crops[i : i + 1].flip(2), single)
        assert torch.allclose(one, pasted[i : i + 1], atol=1e-6)


def test_face_choice_largest_index_and_all(einstein):
    image, _ = einstein
    detector = FaceDetector(upsample=2)  # finds Einstein and the seated man
    every = detect_crops(image, detector, "arcface", 112, choice="all")
    assert len(every) == 2 and every.landmarks[0][:, 0].mean() < every.landmarks[1][:, 0].mean()  # left to right
    largest = detect_crops(image, detector, "arcface", 112, choice="largest")
    assert np.allclose(largest.landmarks[0], every.landmarks[1])  # Einstein stands right of the seated man
    second = detect_crops(image, detector, "arcface", 112, choice="index", index=1)
    assert np.allclose(second.landmarks[0], every.landmarks[1])
    with pytest.raises(NoFaceError, match="face index 5 asked for, but 2"):
        detect_crops(image, detector, "arcface", 112, choice="index", index=5)


def test_no_face_errors_with_the_frame_or_passes_through(astronaut):
    frames = torch.cat([astronaut, torch.zeros_like(astronaut)])
    detector = FaceDetector(upsample=0)
    with pytest.raises(NoFaceError, match="frame 1: no face found"):
        detect_crops(frames, detector)
    face_crop = detect_crops(frames, detector, on_no_face="passthrough")
    assert face_crop.valid.tolist() == [True, False]
    crops = extract_crops(frames, face_crop)
    pasted, mask = paste_crops(frames, torch.rand_like(crops), face_crop)
    assert torch.equal(pasted[1], frames[1]) and mask[1].max() == 0


def test_masks_fade_inside_the_crop():
    labels = np.loadtxt(__import__("conftest").FIXTURES / "einstein.pts", skiprows=3, max_rows=68) - 1
    face_crop = crops_from_points((1024, 817), 1, [0], [labels], [five_points_from_68(labels)], "agetransgan", 256)
    mask = crop_masks(face_crop)
    assert mask[0, 0, 128, 128] == 1.0  # face centre
    assert mask[0, 0, :4].max() == 0 and mask[0, 0, :, :4].max() == 0  # borders
