"""Crop conventions against the official alignment code, re-derived here step by step on Einstein's hand
labels: AgeTransGAN's `img_process.ImageProcessing.crop` and the reenactor's `demo.get_arcface`."""
import numpy as np
import pytest
import torch

from age_reenact.face.align import warp_affine
from age_reenact.face.crop import crops_from_points, extract_crops
from age_reenact.face.templates import AGETRANSGAN, EYE_RULES, REENACTOR, five_points_from_68

PAD = 200  # AgeTransGAN pads the frame by 200 black pixels before fitting and warping


def official_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """skimage's SimilarityTransform.estimate in 2D, as complex least squares: dst ~ a * src + b."""
    s, d = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    sc, dc = s - s.mean(), d - d.mean()
    a = (dc * sc.conj()).sum() / (sc * sc.conj()).sum().real
    b = d.mean() - a * s.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def agetransgan_official(lm: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    lm = lm + PAD
    five = np.array([lm[36:42].mean(0), lm[42:47].mean(0), lm[30], lm[48], lm[54]])
    best = (np.inf, None, -1)
    for index, template in enumerate(AGETRANSGAN.templates):
        template = template.astype(np.float32) * (size / 112)  # the official templates are float32
        matrix = official_similarity(five, template)
        error = np.linalg.norm(five @ matrix[:, :2].T + matrix[:, 2] - template, axis=1).sum()
        best = min(best, (error, matrix, index), key=lambda t: t[0])
    return best[1], best[2]


def reenactor_official(lm: np.ndarray) -> np.ndarray:
    five = np.array([(lm[36] + lm[39]) / 2, (lm[42] + lm[45]) / 2, lm[30], lm[48], lm[54]], dtype=np.float32)
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]]) * 2
    src = src.astype(np.float32)
    src[:, 0] += 31.9721
    return official_similarity(five.astype(np.float64), src.astype(np.float64))


def crop_shift(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    """Largest distance, in crop pixels, between where two frame->crop matrices put the face's points."""
    return float(np.linalg.norm(points @ (a[:, :2] - b[:, :2]).T + (a[:, 2] - b[:, 2]), axis=1).max())


def unpadded(matrix: np.ndarray) -> np.ndarray:
    """A padded-frame -> crop matrix as a frame -> crop matrix: the pad is a shift of both image and points."""
    out = matrix.copy()
    out[:, 2] += matrix[:, :2] @ [PAD, PAD]
    return out


@pytest.mark.parametrize("size", [1024, 256])
def test_agetransgan_crop_is_the_official_transform(einstein, size):
    image, labels = einstein
    record = crops_from_points(tuple(image.shape[1:3]), 1, [0], [labels], [five_points_from_68(labels)], "agetransgan", size)
    official, template = agetransgan_official(labels, size)
    assert record.template_index[0] == template
    # the official float32 templates are the only difference: under 1e-3 px on the face in a 1024 crop
    assert crop_shift(record.matrices[0], unpadded(official), labels) < 1e-3
    assert np.allclose(record.points5[0][1], labels[42:47].mean(0))  # the official five-point right eye


def test_reenactor_crop_uses_eye_corner_midpoints(einstein):
    image, labels = einstein
    record = crops_from_points(tuple(image.shape[1:3]), 1, [0], [labels], [five_points_from_68(labels)], "reenactor", 256)
    assert crop_shift(record.matrices[0], reenactor_official(labels), labels) < 1e-3  # float32 points and template
    assert np.allclose(record.points5[0][0], (labels[36] + labels[39]) / 2)


def test_other_sources_keep_their_points_and_rules_are_named(einstein):
    _, labels = einstein
    given = five_points_from_68(labels)
    # Without 68 landmarks (the 5-point predictor, dataset medians) the given points are fitted as they are.
    assert np.array_equal(AGETRANSGAN.alignment_points(np.zeros((5, 2)), given), given)
    assert REENACTOR.eyes == "corners" and AGETRANSGAN.eyes == "agetransgan" and set(EYE_RULES) == {"mean6", "agetransgan", "corners"}


def test_crop_matches_cv2_warp_of_the_padded_frame_up_to_resampling(einstein):
    """The official pixels: cv2.warpAffine (bilinear) of the 200 px padded frame with the official matrix."""
    cv2 = pytest.importorskip("cv2", reason="cv2 (opencv-python-headless, requirements-dev.txt) makes the reference warp")
    image, labels = einstein
    record = crops_from_points(tuple(image.shape[1:3]), 1, [0], [labels], [five_points_from_68(labels)], "agetransgan", 1024)
    official, _ = agetransgan_official(labels, 1024)
    frame = image[0].numpy().astype(np.float32)
    padded = cv2.copyMakeBorder(frame, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=0)
    reference = torch.from_numpy(cv2.warpAffine(padded, official, (1024, 1024)))
    bilinear = warp_affine(image.permute(0, 3, 1, 2), record.matrices, (1024, 1024), mode="bilinear", antialias=False)[0].permute(1, 2, 0)
    ours = extract_crops(image, record)[0]
    # Same transform, same interpolation: only cv2's 1/32 px fixed-point grid remains.
    assert (bilinear - reference).abs().mean() < 2e-3
    # The pack's bicubic resampling is sharper than cv2's bilinear by a small, measured amount.
    assert (ours - reference).abs().mean() < 1e-2
