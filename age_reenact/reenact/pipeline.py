"""Reenact a source face with the motion of a driving video, chunk by chunk.

For each chunk of driving frames: 68 landmarks per frame (detected on keyframes and tracked between them,
face/track.py; or given), optional smoothing, the reenactor crop fitted to them, target landmarks
(motion.py), sketches (sketch.py), the RFG, and paste-back into the driving frames through the crop's
exact inverse (or the crops themselves). Only the output batch grows with the video; everything else
lives for one chunk, and results are moved to the CPU as each chunk finishes, so long videos run in
bounded memory.

The identity code of the absolute mode is pluggable: `identity_fn` maps source crops [B, 3, S, S]
(0..1, reenactor convention, on the model's device) to [B, identity_dim]. The VGG-Face encoder
(vggface.py) is one such function; an adapter around the pack's AIFD encoder is another.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..devices import resolve_device, resolve_dtype
from ..face.crop import FaceCrops, NoFaceError, crops_from_points, extract_crops
from ..face.detect import FaceDetector, largest
from ..face.paste import COLOR_MATCH, crop_masks, paste_crops
from ..face.templates import five_points_from_68
from ..face.track import LandmarkTracker
from ..images import to_image_batch, to_uint8
from ..weights import WeightsError, build_model, read_weights
from .model import DualGeneratorReenactor
from .motion import MODES, MotionTransfer, OneEuroFilter, smoothing_filter
from .sketch import render_sketches
from .warp import warp_to_landmarks

CONVENTION = "reenactor"
OUTPUTS = ("paste", "crops")
NO_FACE_ACTIONS = ("error", "passthrough")
IdentityFn = Callable[[torch.Tensor], torch.Tensor]


class Reenactor:
    """A loaded reenactor ready to run: model, identity encoder, device and precision.

    The RFG runs at `precision`; the shape generator and the identity code stay in fp32 (they are cheap,
    and landmark coordinates need the precision). With `fold` (load_reenactor's path) the RFG is changed in
    place, once, into its inference form (face_generator.py) with its weights in `precision`: about 2x faster
    on CPUs, and no autocast re-casting the weights on every call. Without it, the RFG runs as it is, under
    autocast below fp32 (a model still training, or shared between two Reenactors).
    """

    def __init__(
        self,
        model: DualGeneratorReenactor,
        identity_fn: IdentityFn | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        fold: bool = False,
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        self.model = model.to(self.device).eval()
        self.folded = fold
        if fold:
            model.rfg.fold_for_inference().to(self.dtype)
        if identity_fn is None and model.identity_source == "style":
            identity_fn = self.model.rfg.style_encoder  # the model carries its own identity code
        self.identity_fn = identity_fn.to(self.device).eval() if isinstance(identity_fn, torch.nn.Module) else identity_fn

    @property
    def size(self) -> int:
        return self.model.size

    def _autocast(self):
        if self.dtype == torch.float32 or self.folded:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _nchw(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).to(self.device, torch.float32)

    @torch.no_grad()
    def style(self, crops: torch.Tensor) -> torch.Tensor:
        """Source crops IMAGE [N, S, S, 3] -> style codes [N, style_dim] (fp32, on the device)."""
        with self._autocast():
            return self.model.rfg.style_encoder(self._nchw(crops)).float()

    @torch.no_grad()
    def identity(self, crops: torch.Tensor) -> torch.Tensor:
        """Source crops IMAGE [N, S, S, 3] -> identity codes [N, identity_dim] for the shape generator."""
        if self.identity_fn is None:
            source = {"vggface": "a VGG-Face (vggface_fc7) file converted from vgg_face_dag.pth", "aifd": "the AIFD identity encoder"}[self.model.identity_source]
            raise ValueError(f"the absolute mode needs the source's identity code from {source}; give the reenactor that encoder, or use the relative mode.")
        code = self.identity_fn(self._nchw(crops)).float()
        if code.shape != (len(crops), self.model.identity_dim):
            raise ValueError(f"the identity encoder gives codes of shape {tuple(code.shape)}, but this reenactor needs {self.model.identity_dim} values per face.")
        return code

    @torch.no_grad()
    def shape(self, driving: np.ndarray, identity: torch.Tensor) -> np.ndarray:
        """Driver landmarks [N, 68, 2] (0..1) + one identity code [1, D] -> IDSG landmarks [N, 68, 2]."""
        landmarks = torch.as_tensor(driving.reshape(len(driving), -1), dtype=torch.float32, device=self.device)
        out = self.model.idsg(landmarks, identity.expand(len(driving), -1))
        return out.double().cpu().numpy().reshape(-1, 68, 2)

    @torch.no_grad()
    def generate(self, sketches: torch.Tensor, style: torch.Tensor, warped: torch.Tensor | None = None) -> torch.Tensor:
        """Sketches [N, 3, S, S] + one style code [1, style_dim] (+ for source_warp models, the source warped to
        each sketch's landmarks [N, 3, S, S]) -> faces IMAGE [N, S, S, 3] on the CPU."""
        with self._autocast():
            warped = None if warped is None else warped.to(self.device)
            faces = self.model.rfg.generator(sketches.to(self.device), style.expand(len(sketches), -1), warped)
        return faces.float().clamp(0, 1).permute(0, 2, 3, 1).cpu()

    @torch.no_grad()
    def warped_source(self, crop: torch.Tensor, landmarks: np.ndarray, targets: np.ndarray) -> torch.Tensor | None:
        """For source_warp models: the source crop IMAGE [1, S, S, 3] with its landmarks [68, 2] moved to each of
        `targets` [N, 68, 2] (both in crop pixels) -> [N, 3, S, S]; None for other models."""
        if not self.model.source_warp:
            return None
        images = self._nchw(crop).expand(len(targets), -1, -1, -1)
        return warp_to_landmarks(images, np.repeat(np.asarray(landmarks)[None], len(targets), 0), targets)


IDENTITY_FILES = {"vggface": "vggface_fc7", "aifd": "aifd_encoder"}  # identity_source -> the identity file's architecture


def load_reenactor(path: str | Path, identity_path: str | Path | None = None, device: str | torch.device = "cpu", precision: str = "fp32") -> Reenactor:
    """A reenactor file, plus optionally the identity encoder its absolute mode needs: a VGG-Face file for
    official models (identity_source "vggface"), the pack's AIFD encoder for models trained on AIFD codes
    ("aifd"); models whose code is their own style code ("style") take none."""
    model = build_model(read_weights(path, "dual_generator_reenactor"))
    identity = None
    if identity_path is not None:
        wanted = IDENTITY_FILES.get(model.identity_source)
        if wanted is None:
            raise WeightsError(f"{Path(path).name} gives its own identity code; load it without an identity file.")
        weights = read_weights(identity_path, wanted)
        if wanted == "aifd_encoder":
            from ..aifd.encoder import encoder_from
            from .identity import AIFDIdentity

            identity = AIFDIdentity(encoder_from(weights).fold_for_inference())
        else:
            identity = build_model(weights)
        if identity.output_dim != model.identity_dim:
            raise WeightsError(f"{Path(identity_path).name} gives {identity.output_dim}-d codes; {Path(path).name} needs {model.identity_dim}.")
    return Reenactor(model, identity, device, precision, fold=True)


@dataclass
class ReenactResult:
    images: torch.Tensor  # [T, H, W, 3] driving frames with the face replaced, or [T, S, S, 3] crops
    masks: torch.Tensor  # [T, H, W] where the face was pasted, or [T, S, S] the face mask of each crop
    sketches: torch.Tensor  # [T, S, S, 3] the RFG's input (black where a frame had no face)
    landmarks: np.ndarray  # [T, 68, 2] target landmarks in crop pixels / S; NaN where a frame had no face


def _largest_face_landmarks(detector: FaceDetector, image: torch.Tensor) -> np.ndarray | None:
    face = largest(detector.detect(to_uint8(image)))
    return None if face is None else face.landmarks


def _crops(frame_size: tuple[int, int], landmarks: np.ndarray, size: int) -> FaceCrops:
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    points5 = np.stack([five_points_from_68(lm) for lm in landmarks]) if len(landmarks) else np.zeros((0, 5, 2))
    return crops_from_points(frame_size, len(landmarks), np.arange(len(landmarks)), landmarks, points5, CONVENTION, size, valid)


def _check_landmarks(landmarks: np.ndarray | None, count: int, name: str) -> np.ndarray | None:
    if landmarks is None:
        return None
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (count, 68, 2):
        raise ValueError(f"{name}: expected iBUG-68 landmarks of shape ({count}, 68, 2) in frame pixels, got {landmarks.shape}.")
    return landmarks


def _driver_landmarks(
    frames: torch.Tensor,
    offset: int,
    given: np.ndarray | None,
    tracker: LandmarkTracker | None,
    smoother: OneEuroFilter | None,
    on_no_face: str,
) -> np.ndarray:
    """Landmarks [n, 68, 2] in frame pixels for one chunk of driving frames (NaN rows: no face)."""
    landmarks = np.full((len(frames), 68, 2), np.nan)
    for row in range(len(frames)):
        found = given[offset + row] if given is not None else tracker(to_uint8(frames[row]))
        if found is None or not np.isfinite(found).all():
            if on_no_face == "error":
                raise NoFaceError(f"driving frame {offset + row}: no face found. Set 'on no face' to passthrough to leave such frames unchanged.")
            if smoother is not None:
                smoother.reset()  # the face may come back elsewhere
            continue
        if smoother is not None:
            found = smoother(found, scale=np.linalg.norm(found[42:48].mean(0) - found[36:42].mean(0)))
        landmarks[row] = found
    return landmarks


def reenact(
    reenactor: Reenactor,
    source: torch.Tensor,
    driving: torch.Tensor,
    mode: str = "absolute",
    smoothing: float = 0.0,
    output: str = "paste",
    detector: FaceDetector | None = None,
    source_landmarks: np.ndarray | None = None,
    driving_landmarks: np.ndarray | None = None,
    detect_every: int = 10,
    chunk_size: int = 16,
    on_no_face: str = "error",
    feather: float = 0.06,
    color_match: str = "none",
    progress: Callable[[int, int], None] | None = None,
) -> ReenactResult:
    """Give the source face (first image of `source`) the motion of the driving frames.

    mode: "absolute" (shape generator, the paper's method) or "relative" (see motion.py).
    smoothing: 0..1 one-euro smoothing of the driver's landmarks across frames (0 = off).
    output: "paste" (driving frames with the new face, same size) or "crops" (the S x S faces; colour
    matching applies to paste only).
    source_landmarks [68, 2] / driving_landmarks [T, 68, 2]: iBUG-68 points in frame pixels that skip
    detection (NaN rows = no face); otherwise `detector` (a 68-point FaceDetector) finds the largest face.
    detect_every: driving frames are detected in full every this many frames (and where tracking loses
    the face); in between, the landmarks are tracked from the previous frame (face/track.py). 1: detect all.
    on_no_face: "error", or "passthrough" to leave driving frames without a face unchanged.
    """
    if mode not in MODES or output not in OUTPUTS or on_no_face not in NO_FACE_ACTIONS or color_match not in COLOR_MATCH:
        raise ValueError(f"mode in {MODES}, output in {OUTPUTS}, on_no_face in {NO_FACE_ACTIONS}, color_match in {COLOR_MATCH}; got {mode!r}, {output!r}, {on_no_face!r}, {color_match!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if (source_landmarks is None or driving_landmarks is None) and detector is None:
        detector = FaceDetector(landmarks="68")
    if detector is not None and detector.landmarks != "68":
        raise ValueError("the reenactor draws sketches from 68 landmarks; use a detector with landmarks='68'.")
    size = reenactor.size
    smoother = smoothing_filter(smoothing)  # validates the range before any work
    tracker = LandmarkTracker(detector, detect_every) if driving_landmarks is None else None
    if not isinstance(driving, torch.Tensor) or driving.ndim != 4 or len(driving) == 0:
        driving = to_image_batch(driving, "driving")  # a single frame, or an error that says what is wrong
    total, height, width = driving.shape[:3]
    driving_landmarks = _check_landmarks(driving_landmarks, total, "driving_landmarks")

    source = to_image_batch(source, "source")[:1]
    src_landmarks = _check_landmarks(None if source_landmarks is None else np.asarray(source_landmarks)[None], 1, "source_landmarks")
    if src_landmarks is None:
        found = _largest_face_landmarks(detector, source[0])
        if found is None:
            raise NoFaceError("source image: no face found. Use a clearer, larger frontal face, or pass its landmarks.")
        src_landmarks = found[None]
    src_crops = _crops(tuple(source.shape[1:3]), src_landmarks, size)
    src_crop = extract_crops(source, src_crops)
    style = reenactor.style(src_crop)
    shape_fn = partial(reenactor.shape, identity=reenactor.identity(src_crop)) if mode == "absolute" else None
    src_points = src_crops.crop_landmarks()[0]
    motion = MotionTransfer(mode, src_points / size, shape_fn)

    out_hw = (height, width) if output == "paste" else (size, size)
    images = torch.empty(total, *out_hw, 3)
    masks = torch.zeros(total, *out_hw)
    sketches = torch.zeros(total, size, size, 3)
    targets = np.full((total, 68, 2), np.nan)
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        frames = to_image_batch(driving[start:stop], "driving")  # one chunk of float copies at a time
        crops = _crops((height, width), _driver_landmarks(frames, start, driving_landmarks, tracker, smoother, on_no_face), size)
        valid = np.flatnonzero(crops.valid)
        faces = torch.zeros(len(crops), size, size, 3)
        if len(valid):
            target = motion(crops.crop_landmarks()[valid] / size)
            targets[start + valid] = target
            chunk_sketches = render_sketches(target * size, size)
            faces[valid] = reenactor.generate(chunk_sketches, style, reenactor.warped_source(src_crop, src_points, target * size))
            sketches[start + valid] = chunk_sketches.permute(0, 2, 3, 1)
        if output == "paste":
            images[start:stop], masks[start:stop] = paste_crops(frames, faces, crops, feather, color_match)
        else:
            missing = np.flatnonzero(~crops.valid)
            if len(missing):  # frames without a face give their centre square
                faces[missing] = extract_crops(frames, crops.select(missing))
            images[start:stop] = faces
            masks[start:stop] = crop_masks(crops, size, feather)[:, 0]
        del frames, faces  # freed before the next chunk allocates its own
        if progress is not None:
            progress(stop, total)
    return ReenactResult(images, masks, sketches, targets)
