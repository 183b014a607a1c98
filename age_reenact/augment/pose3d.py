"""A 3D iBUG-68 landmark template, head pose from 2D landmarks, and re-posing landmarks to a new pose.

The template takes x, y from the 2D mean shape (`face.mean_shape`, ArcFace-112 pixels) and adds a
depth per landmark group; it is centred on its 3D centroid. The depths are a hand-made anthropometric profile in the
same pixel units (the face is about 82 px wide, so 1 px is roughly 1.7 mm): nose tip 20 px in front of
the eye line, outer eye corners 8 px behind the inner ones, the jaw contour curving back to about 60 px
behind the nose tip at the ears. Check: turned by the nose-to-eye offset, it reproduces the yaw of
AgeTransGAN's half-profile crop template (eyes 20.5 px apart, nose 15.6 px off the eye midpoint, i.e. a
nose depth of about 20 px at 51 degrees of yaw).

Axes: x right, y down (image), z toward the viewer. Angles in degrees:
- yaw > 0 turns the face toward the image's right (the nose moves right);
- pitch > 0 tilts the face up (the nose moves up);
- roll > 0 rotates the face clockwise in the image.
R = Rz(roll) @ Rx(pitch) @ Ry(yaw). The fit is scaled-orthographic, which is accurate for faces that
fill a crop (the camera is far compared with the depth of a face). Jaw points keep their 3D place when
turned, where a detector would slide them to the visible silhouette: past about 40 degrees of yaw the
far side of the jaw contour runs inside the face.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..face.mean_shape import MEAN_SHAPE_68


def _depth_profile() -> np.ndarray:
    z = np.zeros(68)
    # Jaw 0..16, symmetric around the chin (8); index = distance from the chin.
    z[0:17] = np.array([4, 2, -3, -9, -16, -24, -31, -37, -42])[np.abs(np.arange(17) - 8)]
    z[17:22] = [-8, -2, 3, 4, 5]  # right brow (image left), outer -> inner
    z[22:27] = [5, 4, 3, -2, -8]  # left brow, inner -> outer
    z[27:31] = [8, 11, 15, 20]  # nose bridge down to the tip
    z[31:36] = [10, 13, 15, 13, 10]  # nostrils
    z[36:42] = [-6, 0, 0, 2, 0, 0]  # right eye: outer corner, upper lid, inner corner, lower lid
    z[42:48] = [2, 0, 0, -6, 0, 0]  # left eye: inner corner, upper lid, outer corner, lower lid
    z[48:60] = [0, 5, 8, 10, 8, 5, 0, 5, 8, 10, 8, 5]  # outer lips, corner to corner and back
    z[60:68] = [3, 7, 8, 7, 3, 7, 8, 7]  # inner lips
    return z


# Centred in 3D, so turning a face keeps its landmark centroid in place.
TEMPLATE_3D = np.column_stack([MEAN_SHAPE_68, _depth_profile()]) - np.append(MEAN_SHAPE_68.mean(0), _depth_profile().mean())


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation for (yaw, pitch, roll) in degrees, in the conventions of this module."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def euler_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation built as in `rotation_matrix`."""
    pitch = np.arcsin(np.clip(rotation[2, 1], -1.0, 1.0))
    yaw = np.arctan2(-rotation[2, 0], rotation[2, 2])
    roll = np.arctan2(-rotation[0, 1], rotation[1, 1])
    return tuple(float(a) for a in np.degrees([yaw, pitch, roll]))


@dataclass
class HeadPose:
    """Scaled-orthographic camera of one face: image = scale * (rotation @ X)[:2] + translation."""

    rotation: np.ndarray  # (3, 3)
    scale: float
    translation: np.ndarray  # (2,)

    @property
    def angles(self) -> tuple[float, float, float]:
        return euler_angles(self.rotation)

    def project(self, points3d: np.ndarray) -> np.ndarray:
        return self.scale * (points3d @ self.rotation.T)[:, :2] + self.translation


def _check_68(landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"pose estimation needs 68 iBUG landmarks as (68, 2), got shape {landmarks.shape}; use the 68-point predictor.")
    if not np.isfinite(landmarks).all():
        raise ValueError("the landmarks contain NaN (a frame without a face); pose maps need a detected face.")
    return landmarks


def estimate_pose(landmarks: np.ndarray) -> HeadPose:
    """Fit the template to 68 image landmarks: the nearest scaled rotation to the least-squares 2x3 map."""
    landmarks = _check_68(landmarks)
    centre = landmarks.mean(0)
    affine, *_ = np.linalg.lstsq(TEMPLATE_3D, landmarks - centre, rcond=None)  # (3, 2)
    u, s, vt = np.linalg.svd(affine.T, full_matrices=False)  # affine.T is (2, 3)
    rows = u @ vt  # orthonormal rows closest to the fitted map
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    return HeadPose(rotation=rotation, scale=float(s.mean()), translation=centre)


def lift_to_3d(landmarks: np.ndarray, pose: HeadPose | None = None) -> np.ndarray:
    """The face's own 3D shape in template axes: its x, y as seen, the template's depth in the fitted pose.

    Keeping the observed x, y (rather than the template's) carries the person's face shape and
    expression into the new pose.
    """
    landmarks = _check_68(landmarks)
    pose = pose or estimate_pose(landmarks)
    depth = (TEMPLATE_3D @ pose.rotation.T)[:, 2]
    camera = np.column_stack([(landmarks - pose.translation) / pose.scale, depth])
    return camera @ pose.rotation  # rotate back: R^T applied to each row


def repose(landmarks: np.ndarray, rotation: np.ndarray, pose: HeadPose | None = None) -> np.ndarray:
    """The landmarks turned to the absolute head rotation `rotation`, keeping their centre and scale."""
    pose = pose or estimate_pose(landmarks)
    shape = lift_to_3d(landmarks, pose)
    return HeadPose(rotation=rotation, scale=pose.scale, translation=pose.translation).project(shape)


def target_rotation(source: HeadPose, yaw: float, pitch: float, roll: float, relative: bool = True) -> np.ndarray:
    """Absolute target rotation: the edit added to the source pose (relative) or the angles themselves."""
    edit = rotation_matrix(yaw, pitch, roll)
    if not relative:
        return edit
    # Compose the angles rather than the matrices, so that "yaw +30" on a pitched face stays a pure
    # yaw change in the reported angles.
    sy, sp, sr = source.angles
    return rotation_matrix(sy + yaw, sp + pitch, sr + roll)


DRIVING_MODES = ("pose", "landmarks")


@dataclass
class PoseTargets:
    """Target poses of a batch of faces (the FACE_POSE node type): what the pose maps were drawn from."""

    landmarks: np.ndarray  # (N, 68, 2) pixels of a size x size map; NaN rows for faces without landmarks
    angles: np.ndarray  # (N, 3) yaw, pitch, roll in degrees
    size: int

    def __len__(self) -> int:
        return len(self.landmarks)

    def landmarks_at(self, size: int) -> np.ndarray:
        return self.landmarks * (size / self.size)


def _target(source: np.ndarray, edit: tuple[float, float, float], relative: bool, driving: np.ndarray | None, mode: str):
    if driving is None:
        pose = estimate_pose(source)
        rotation = target_rotation(pose, *edit, relative=relative)
        return repose(source, rotation, pose), euler_angles(rotation)
    driving_pose = estimate_pose(driving)
    if mode == "pose":  # the source's own face shape, turned to the driving head pose
        rotation = target_rotation(driving_pose, *edit, relative=True)
        return repose(source, rotation), euler_angles(rotation)
    # The driving face's landmarks (shape and expression), moved onto the source face's centre and scale.
    pose = estimate_pose(source)
    moved = (driving - driving_pose.translation) * (pose.scale / driving_pose.scale) + pose.translation
    if not any(edit):
        return moved, driving_pose.angles
    moved_pose = estimate_pose(moved)
    rotation = target_rotation(moved_pose, *edit, relative=True)
    return repose(moved, rotation, moved_pose), euler_angles(rotation)


def target_landmarks(
    source: np.ndarray,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    relative: bool = True,
    driving: np.ndarray | None = None,
    driving_mode: str = "pose",
) -> tuple[np.ndarray, np.ndarray]:
    """Target landmarks (N, 68, 2) and their (yaw, pitch, roll) (N, 3) for source landmarks (N, 68, 2).

    Without `driving`, the sources are turned by the edit (relative) or to the given angles. With
    `driving` (1 or N landmark sets, same pixel frame as the sources), the target pose is the driving
    face's ("pose": the source's face shape in the driving pose; "landmarks": the driving face's own
    landmarks moved onto the source face), with the edit added on top. Faces with NaN landmarks (no face
    found) give NaN rows.
    """
    if driving_mode not in DRIVING_MODES:
        raise ValueError(f"driving mode must be one of {DRIVING_MODES}, got {driving_mode!r}")
    source = np.asarray(source, dtype=np.float64).reshape(-1, 68, 2)
    if driving is not None:
        driving = np.asarray(driving, dtype=np.float64).reshape(-1, 68, 2)
        if len(driving) not in (1, len(source)):
            raise ValueError(f"{len(driving)} driving faces for {len(source)} source faces; give one driving face or one per source face.")
    landmarks = np.full_like(source, np.nan)
    angles = np.full((len(source), 3), np.nan)
    for i, points in enumerate(source):
        drive = None if driving is None else driving[i if len(driving) > 1 else 0]
        if not np.isfinite(points).all() or (drive is not None and not np.isfinite(drive).all()):
            continue
        landmarks[i], angles[i] = _target(points, (yaw, pitch, roll), relative, drive, driving_mode)
    return landmarks, angles
