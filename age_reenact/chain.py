"""Simultaneous reenactment and ageing: a source face, driving frames and target age groups -> the driving
frames with the source face, in the driver's pose and expression, at each target age.

Two orders:
- reenact_then_age: reenact once, then age every reenacted face to each target (the reenactor runs once
  however many targets there are, and AgeTransGAN sees the final pose);
- age_then_reenact: age the source face to each target, then reenact each aged source (AgeTransGAN sees
  the source's own, usually frontal, face).

Detection and alignment are shared: the source and every driving frame are detected once (driving frames
on keyframes, tracked in between: face/track.py). Later stages
reuse that geometry instead of searching the generated faces again: the reenacted face is where its
target landmarks (the sketch the face generator drew from) lie in the driving frame, and an aged source
keeps the source's landmarks. Given the same geometry, each stage is exactly the single-model pipeline
(`reenact`, `AgeTransGAN.transform_crops` + `paste_crops`) with the same seed, so the result equals the
single nodes wired by hand.

Driving frames are processed in chunks (detect, smooth, reenact, age, paste, write out), with progress
and cancellation after each chunk; besides the output batch, only one chunk is alive at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .age_groups import groups_for
from .agetransgan.age_codes import one_hot_code
from .agetransgan.pipeline import AgeTransGAN
from .face.align import transform_points
from .face.crop import FaceCrops, NoFaceError, crops_from_points, extract_crops
from .face.detect import FaceDetector
from .face.track import LandmarkTracker
from .face.paste import COLOR_MATCH, paste_crops
from .face.templates import five_points_from_68
from .images import to_image_batch
from .reenact.motion import MODES, smoothing_filter
from .reenact.pipeline import NO_FACE_ACTIONS, Reenactor, _crops, _driver_landmarks, _largest_face_landmarks, reenact

ORDERS = ("reenact_then_age", "age_then_reenact")
ALL_GROUPS = "all"
Progress = Callable[[int, int], None]


@dataclass
class ChainSettings:
    order: str = "reenact_then_age"
    mode: str = "relative"  # reenactment motion: "absolute" needs the reenactor's identity encoder
    smoothing: float = 0.0  # one-euro smoothing of the driver's landmarks, 0..1
    seed: int = 0  # AgeTransGAN noise; the same for every frame, so videos stay steady
    chunk_size: int = 16
    on_no_face: str = "error"  # or "passthrough": driving frames without a face stay unchanged
    feather: float = 0.06
    color_match: str = "none"
    detect_every: int = 10  # driving frames detected in full every this many frames, tracked in between

    def validate(self) -> None:
        for name, value, allowed in (("order", self.order, ORDERS), ("mode", self.mode, MODES),
                                     ("on_no_face", self.on_no_face, NO_FACE_ACTIONS), ("color_match", self.color_match, COLOR_MATCH)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value in (("chunk_size", self.chunk_size), ("detect_every", self.detect_every)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        smoothing_filter(self.smoothing)  # range check


@dataclass
class ChainResult:
    images: torch.Tensor  # [G*T, H, W, 3]: all driving frames at the first target, then at the next, ...
    masks: torch.Tensor  # [G*T, H, W]: where the frame changed (1 = face fully replaced)
    face_crops: FaceCrops  # the final face of every output frame, AgeTransGAN convention (e.g. for age estimation)
    labels: list[str]  # one per target group


def parse_targets(targets: str | Sequence[str], group_count: int) -> list[str]:
    """Target groups as names: a list, or text such as "30-39, 70+" or "all", checked against the model's groups."""
    groups = groups_for(group_count)
    names = [t.strip() for t in targets.replace(";", ",").split(",")] if isinstance(targets, str) else [str(t).strip() for t in targets]
    names = [n for n in names if n]
    if names == [ALL_GROUPS]:
        return list(groups.names)
    unknown = [n for n in names if n not in groups.names]
    if unknown or not names:
        raise ValueError(f"target groups {unknown or names!r}: this {groups.count}-group model has {', '.join(groups.names)} (or 'all'); separate several with commas.")
    return names


def _aged_crops(ager: AgeTransGAN, frames: torch.Tensor, landmarks: np.ndarray, code: torch.Tensor, seed: int, chunk: int) -> tuple[FaceCrops, torch.Tensor]:
    """Age the faces at known 68-point landmarks [n, 68, 2] (frame px; NaN rows: no face), one per frame."""
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    points5 = np.stack([five_points_from_68(lm) for lm in landmarks])
    face_crops = crops_from_points(tuple(frames.shape[1:3]), len(frames), np.arange(len(frames)), landmarks, points5, "agetransgan", ager.size, valid)
    return face_crops, ager.transform_crops(extract_crops(frames, face_crops), face_crops, code, seed, chunk=chunk)


def _to_frame(reenact_crops: FaceCrops, targets: np.ndarray) -> np.ndarray:
    """Reenactor target landmarks [n, 68, 2] (crop px / size) -> frame px, through each driving crop's inverse."""
    out = np.full_like(targets, np.nan)
    for row in np.flatnonzero(reenact_crops.valid):
        out[row] = transform_points(reenact_crops.inverse_matrices[row], targets[row] * reenact_crops.size)
    return out


class _Reenactment:
    """reenact() on successive chunks of one video, with the state a single whole-video call would keep.

    Tracking and smoothing run here, before the chunk is handed over. The relative mode measures motion from the
    driver's first face frame, so that frame (once seen) is put in front of every later chunk and its
    output dropped: chunk by chunk then gives exactly what one call over the whole video gives.
    """

    def __init__(self, reenactor: Reenactor, source_landmarks: np.ndarray, settings: ChainSettings, detector: FaceDetector):
        self.reenactor, self.source_landmarks, self.settings = reenactor, source_landmarks, settings
        self.smoother = smoothing_filter(settings.smoothing)
        self.tracker = LandmarkTracker(detector, settings.detect_every)
        self.reference: tuple[torch.Tensor, np.ndarray] | None = None

    def landmarks(self, frames: torch.Tensor, offset: int) -> np.ndarray:
        """Detected or tracked (and smoothed) driver landmarks of one chunk; raises on a faceless frame unless passthrough."""
        found = _driver_landmarks(frames, offset, None, self.tracker, self.smoother, self.settings.on_no_face)
        valid = np.flatnonzero(np.isfinite(found).all(axis=(1, 2)))
        if self.reference is None and len(valid):
            self.reference = (frames[valid[0] : valid[0] + 1].clone(), found[valid[0]][None])  # not a view: the chunk is freed
        return found

    def __call__(self, source: torch.Tensor, frames: torch.Tensor, landmarks: np.ndarray):
        """(pasted frames [n, H, W, 3], masks [n, H, W], target landmarks in frame px [n, 68, 2])."""
        s = self.settings
        faces = landmarks[np.isfinite(landmarks).all(axis=(1, 2))]
        prepend = s.mode == "relative" and len(faces) > 0 and not np.array_equal(faces[:1], self.reference[1])
        if prepend:
            frames, landmarks = torch.cat([self.reference[0], frames]), np.concatenate([self.reference[1], landmarks])
        result = reenact(self.reenactor, source, frames, mode=s.mode, output="paste", source_landmarks=self.source_landmarks,
                         driving_landmarks=landmarks, chunk_size=len(frames), on_no_face="passthrough", feather=s.feather, color_match=s.color_match)
        targets = _to_frame(_crops(tuple(frames.shape[1:3]), landmarks, self.reenactor.size), result.landmarks)
        skip = int(prepend)
        return result.images[skip:], result.masks[skip:], targets[skip:]


def reenact_and_age(
    reenactor: Reenactor,
    ager: AgeTransGAN,
    source: torch.Tensor,
    driving: torch.Tensor,
    targets: str | Sequence[str] = "50-69",
    settings: ChainSettings | None = None,
    detector: FaceDetector | None = None,
    progress: Progress | None = None,
) -> ChainResult:
    """The source face (largest face of the first `source` image) with the motion of every driving frame,
    at every target group: IMAGE [G*T, H, W, 3], target-major. `detector`: a 68-point FaceDetector."""
    settings = settings or ChainSettings()
    settings.validate()
    detector = detector or FaceDetector(landmarks="68")
    if detector.landmarks != "68":
        raise ValueError("the reenactor draws sketches from 68 landmarks; use a detector with landmarks='68'.")
    names = parse_targets(targets, ager.group_count)
    codes = [one_hot_code(groups_for(ager.group_count), name) for name in names]
    if not isinstance(driving, torch.Tensor) or driving.ndim != 4 or len(driving) == 0:
        driving = to_image_batch(driving, "driving")  # a single frame, or an error that says what is wrong
    total, height, width = driving.shape[:3]

    source = to_image_batch(source, "source")[:1]
    source_landmarks = _largest_face_landmarks(detector, source[0])
    if source_landmarks is None:
        raise NoFaceError("source image: no face found. Use a clearer, larger frontal face.")
    sources = [source] * len(codes)
    if settings.order == "age_then_reenact":  # the aged face keeps the source's geometry
        sources = []
        for code in codes:
            face_crops, aged = _aged_crops(ager, source, source_landmarks[None], code, settings.seed, settings.chunk_size)
            sources.append(paste_crops(source, aged, face_crops, settings.feather, settings.color_match)[0])

    images = torch.empty(len(codes) * total, height, width, 3)
    masks = torch.zeros(len(codes) * total, height, width)
    final = np.full((total, 68, 2), np.nan)
    run = _Reenactment(reenactor, source_landmarks, settings, detector)
    done = 0
    for start in range(0, total, settings.chunk_size):
        stop = min(start + settings.chunk_size, total)
        frames = to_image_batch(driving[start:stop], "driving")  # one chunk of float copies at a time
        landmarks = run.landmarks(frames, start)
        if settings.order == "reenact_then_age":
            pasted, reenact_masks, final[start:stop] = run(source, frames, landmarks)
        for g, code in enumerate(codes):
            rows = slice(g * total + start, g * total + stop)
            if settings.order == "reenact_then_age":
                face_crops, aged = _aged_crops(ager, pasted, final[start:stop], code, settings.seed, settings.chunk_size)
                images[rows], age_masks = paste_crops(pasted, aged, face_crops, settings.feather, settings.color_match)
                masks[rows] = torch.maximum(reenact_masks, age_masks)
            else:
                images[rows], masks[rows], final[start:stop] = run(sources[g], frames, landmarks)
            done += stop - start
            if progress is not None:
                progress(done, len(codes) * total)
        del frames  # freed before the next chunk allocates its own

    repeated = np.tile(final, (len(codes), 1, 1))
    valid = np.isfinite(repeated).all(axis=(1, 2))
    face_crops = crops_from_points((height, width), len(repeated), np.arange(len(repeated)), repeated,
                                   np.stack([five_points_from_68(lm) for lm in repeated]), "agetransgan", ager.size, valid)
    return ChainResult(images, masks, face_crops, names)
