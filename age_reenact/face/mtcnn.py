"""MTCNN face detector (Zhang et al., 2016) in plain PyTorch: face boxes, scores and 5 points.

Three small networks in a cascade: P-Net proposes windows over an image pyramid, R-Net (24 px) and
O-Net (48 px) re-score and refine them; O-Net also places eye centres, nose tip and mouth corners.
The weights are facenet-pytorch's (MIT), converted once to safetensors by tools/convert_mtcnn.py.
Layer names, the (x - 127.5) / 128 input and the transposed flatten before the dense layers are
theirs, so the converted tensors load unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..weights import register_architecture

CHANNELS_LAST = torch.channels_last  # a quarter faster on CPU than NCHW for these thin layers (max pooling most)


class PNet(nn.Module):
    """Fully convolutional proposal net: a face score and box offsets for every 12 px window (stride 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    # The weights were converted from a channels-last framework: flatten in (W, H, C) order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refines P-Net's windows at 24x24 px: score and box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Final stage at 48x48 px: score, box offsets and 5 points (x0..x4, y0..y4 as fractions of the box)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression; mode 'min' divides the overlap by the smaller box."""
    x0, y0, x1, y1 = boxes[:, :4].T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        overlap = inter / (np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _apply_offsets(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    size = boxes[:, 2:4] - boxes[:, 0:2] + 1
    return boxes[:, :4] + offsets * np.concatenate([size, size], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    side = (boxes[:, 2:4] - boxes[:, 0:2]).max(axis=1, keepdims=True)
    return np.concatenate([centre - side / 2, centre + side / 2], axis=1)


def network_input(frame: np.ndarray) -> torch.Tensor:
    """A uint8 RGB frame [H, W, 3] -> [1, 3, H, W] in MTCNN's (x - 127.5) / 128 scale (a copy: frames may be read-only)."""
    return (torch.tensor(frame).permute(2, 0, 1)[None].float() - 127.5) / 128.0


def crop_windows(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Each box cut out of image [1, 3, H, W] (zero outside the frame) and area-resized to size x size."""
    _, _, h, w = image.shape
    out = []
    for x0, y0, x1, y1 in np.trunc(boxes[:, :4]).astype(np.int64):
        patch = image.new_zeros(1, 3, max(1, y1 - y0), max(1, x1 - x0))
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 > sx0 and sy1 > sy0:
            patch[:, :, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[:, :, sy0:sy1, sx0:sx1]
        out.append(F.interpolate(patch, size=(size, size), mode="area"))
    return torch.cat(out).contiguous(memory_format=CHANNELS_LAST)


@register_architecture("mtcnn")
class MTCNN(nn.Module):
    """The P/R/O-net cascade; `detect` takes one uint8 RGB frame."""

    # R-Net keeps windows from 0.6, not the authors' 0.7: at 0.7 it drops Einstein's face in a mirrored or
    # 3/4-scaled einstein.jpg, which O-Net then scores 0.92. O-Net (0.7) and the pack's floor decide.
    def __init__(self, thresholds: tuple[float, float, float] = (0.6, 0.6, 0.7), pyramid_factor: float = 0.709):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.thresholds = tuple(thresholds)
        self.pyramid_factor = pyramid_factor

    def _propose(self, image: torch.Tensor, min_face: float) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes (x0, y0, x1, y1, score), squared."""
        _, _, h, w = image.shape
        scale, found = 12.0 / min_face, []
        while min(h, w) * scale >= 12:
            level = F.interpolate(image, size=(int(h * scale + 1), int(w * scale + 1)), mode="area").contiguous(memory_format=CHANNELS_LAST)
            offsets, probs = self.pnet(level)
            ys, xs = torch.nonzero(probs[0] >= self.thresholds[0], as_tuple=True)
            if len(ys):
                cells = torch.stack([xs, ys], 1).double().numpy()
                boxes = np.concatenate([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale)], axis=1)
                candidates = np.concatenate([boxes, probs[0, ys, xs][:, None].double().numpy(), offsets[0, :, ys, xs].T.double().numpy()], axis=1)
                found.append(candidates[nms(candidates, candidates[:, 4], 0.5)])
            scale *= self.pyramid_factor
        if not found:
            return np.zeros((0, 5))
        candidates = np.concatenate(found)
        candidates = candidates[nms(candidates, candidates[:, 4], 0.7)]
        return np.concatenate([_square(_apply_offsets(candidates, candidates[:, 5:9])), candidates[:, 4:5]], axis=1)

    @torch.no_grad()
    def detect(self, frame: np.ndarray, min_face: float = 20.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 4) x0, y0, x1, y1 in pixels, scores (N,) and points (N, 5, 2) of one uint8 RGB frame.

        min_face: the smallest face side searched for, in pixels (the pyramid starts at 12 / min_face).
        """
        image = network_input(frame)
        boxes = self._propose(image, min_face)
        if len(boxes):
            offsets, scores = self.rnet(crop_windows(image, boxes, 24))
            keep = (scores >= self.thresholds[1]).numpy()
            boxes = np.concatenate([boxes[keep, :4], scores[keep, None].double().numpy()], axis=1)
            offsets = offsets[keep].double().numpy()
            pick = nms(boxes, boxes[:, 4], 0.7)
            boxes = np.concatenate([_square(_apply_offsets(boxes[pick], offsets[pick])), boxes[pick, 4:5]], axis=1)
        if not len(boxes):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        offsets, points, scores = (t.double().numpy() for t in self.onet(crop_windows(image, boxes, 48)))
        keep = scores >= self.thresholds[2]
        boxes, offsets, points, scores = boxes[keep], offsets[keep], points[keep], scores[keep]
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        points = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None] + boxes[:, None, 0:2]
        boxes = _apply_offsets(boxes, offsets)
        pick = nms(boxes, scores, 0.7, mode="min")
        return boxes[pick], scores[pick], points[pick]
