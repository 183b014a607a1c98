"""OpenCV's `cv2.line` (LINE_8, integer end points), reimplemented pixel for pixel in Python.

The official reenactment demo draws its landmark sketches with `cv2.line(img, p1, p2, color, 2)`, and the
RFG was trained on such sketches, so this pack draws them by the same rule without depending on OpenCV
(ComfyUI installs often carry another OpenCV build, and two cv2 distributions overwrite each other).
This follows modules/imgproc/src/drawing.cpp:
- thickness 1: `Line`, Bresenham through `LineIterator` after `clipLine`;
- thickness > 1: `ThickLine`, a 4-point polygon in 16.16 fixed point (`FillConvexPoly`: its outline by
  `Line2`, then a scanline fill) plus a filled `Circle` at each end.
Integer arithmetic is kept exactly: C division truncates towards zero, shifts floor, and `cvRound` rounds
half to even (as Python's `round` does).

Derived from OpenCV (https://github.com/opencv/opencv, modules/imgproc/src/drawing.cpp), licensed under the
Apache License 2.0 (Copyright (C) 2000-2022, Intel Corporation, OpenCV Foundation and contributors); modified:
translated from C++ to Python, reduced to 8-connected lines of integer end points on uint8 images.

It is the rule of OpenCV 4.7, which the official demo's environment pins. Later releases (4.14 and 5.0 were
checked) first clip a thick segment to the image grown by `thickness` on every side, which moves its
pixels only when an end point lies further than that outside the image.
"""
from __future__ import annotations

import math

import numpy as np

XY_SHIFT = 16
XY_ONE = 1 << XY_SHIFT
HALF = XY_ONE >> 1


def _cdiv(a: int, b: int) -> int:
    """C's integer division: truncates towards zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _clip_line(width: int, height: int, x1: int, y1: int, x2: int, y2: int) -> tuple[bool, int, int, int, int]:
    """`clipLine`: the segment clipped to [0, width) x [0, height); False when nothing of it is inside."""
    if width <= 0 or height <= 0:
        return False, x1, y1, x2, y2
    right, bottom = width - 1, height - 1
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int((a - y1) * float(x2 - x1) / (y2 - y1))
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int((a - y2) * float(x2 - x1) / (y2 - y1))
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int((a - x1) * float(y2 - y1) / (x2 - x1))
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int((a - x2) * float(y2 - y1) / (x2 - x1))
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, x1, y1, x2, y2


def _put(canvas: np.ndarray, points: list[tuple[int, int]], value: int) -> None:
    """Set the points that fall inside the canvas (lines are a few pixels long: plain loops beat numpy)."""
    height, width = canvas.shape[:2]
    for x, y in points:
        if 0 <= x < width and 0 <= y < height:
            canvas[y, x] = value


def _line(canvas: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], value: int) -> None:
    """`Line` with 8-connectivity (thickness 1): Bresenham from the left end point."""
    height, width = canvas.shape[:2]
    (x1, y1), (x2, y2) = p1, p2
    if not (0 <= x1 < width and 0 <= x2 < width and 0 <= y1 < height and 0 <= y2 < height):
        inside, x1, y1, x2, y2 = _clip_line(width, height, x1, y1, x2, y2)
        if not inside:
            return
    if x2 < x1:
        x1, y1, x2, y2 = x2, y2, x1, y1
    dx, dy = x2 - x1, abs(y2 - y1)
    # (main, minor) axis steps: x always advances on a shallow line, y on a steep one.
    x_main, y_main, x_minor, y_minor = 1, 0, 0, (1 if y2 >= y1 else -1)
    if dy > dx:
        dx, dy = dy, dx
        x_main, y_main, x_minor, y_minor = x_minor, y_minor, x_main, y_main
    err, points = dx - 2 * dy, []
    for _ in range(dx + 1):
        points.append((x1, y1))
        minor = err < 0
        err += -2 * dy + (2 * dx if minor else 0)
        x1 += x_main + (x_minor if minor else 0)
        y1 += y_main + (y_minor if minor else 0)
    _put(canvas, points, value)


def _line2(canvas: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], value: int) -> None:
    """`Line2`: a polygon edge between 16.16 fixed-point end points."""
    height, width = canvas.shape[:2]
    inside, x1, y1, x2, y2 = _clip_line(width << XY_SHIFT, height << XY_SHIFT, *p1, *p2)
    if not inside:
        return
    dx, dy = x2 - x1, y2 - y1
    if abs(dx) > abs(dy):
        if dx < 0:
            x1, y1, x2, y2, dy = x2, y2, x1, y1, -dy
        step = _cdiv(dy << XY_SHIFT, abs(dx) | 1)
        x, y = (x1 + HALF) >> XY_SHIFT, y1 + HALF
        points = [(x + k, (y + k * step) >> XY_SHIFT) for k in range(((x2 - x1) >> XY_SHIFT) + 1)]
    else:
        if dy < 0:
            x1, y1, x2, y2, dx = x2, y2, x1, y1, -dx
        step = _cdiv(dx << XY_SHIFT, abs(dy) | 1)
        x, y = x1 + HALF, (y1 + HALF) >> XY_SHIFT
        points = [((x + k * step) >> XY_SHIFT, y + k) for k in range(((y2 - y1) >> XY_SHIFT) + 1)]
    points.append(((x2 + HALF) >> XY_SHIFT, (y2 + HALF) >> XY_SHIFT))  # OpenCV sets the far end point too
    _put(canvas, points, value)


def _fill_convex_poly(canvas: np.ndarray, points: list[tuple[int, int]], value: int) -> None:
    """`FillConvexPoly` at shift 16 with LINE_8: the outline, then scanlines between the two edge chains."""
    height, width = canvas.shape[:2]
    n = len(points)
    for i in range(n):
        _line2(canvas, points[i - 1], points[i], value)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    imin = ys.index(min(ys))  # the first of the topmost vertices
    xmin, xmax = (min(xs) + HALF) >> XY_SHIFT, (max(xs) + HALF) >> XY_SHIFT
    ymin, ymax = (min(ys) + HALF) >> XY_SHIFT, (max(ys) + HALF) >> XY_SHIFT
    if xmax < 0 or ymax < 0 or xmin >= width or ymin >= height:
        return
    ymax = min(ymax, height - 1)
    # Two edge chains walk from the top vertex, one forwards and one backwards through the vertices.
    chain_idx, chain_dir, chain_ye = [imin, imin], [1, n - 1], [ymin, ymin]
    chain_x, chain_dx = [-XY_ONE, -XY_ONE], [0, 0]
    edges, y = n, ymin
    while True:
        for c in range(2):
            if y < chain_ye[c]:
                continue
            idx0 = chain_idx[c]
            idx = (idx0 + chain_dir[c]) % n
            while edges > 0:  # OpenCV's `edges-- > 0`: the count drops below 0 once all are used
                edges -= 1
                ty = (points[idx][1] + HALF) >> XY_SHIFT
                if ty > y:
                    xs0, xe = points[idx0][0], points[idx][0]
                    chain_ye[c], chain_x[c], chain_idx[c] = ty, xs0, idx
                    chain_dx[c] = _cdiv((xe - xs0) * 2 + (ty - y), 2 * (ty - y))
                    break
                idx0, idx = idx, (idx + chain_dir[c]) % n
            else:
                edges -= 1
        if edges < 0:
            break
        if y >= 0:
            left, right = sorted(chain_x)
            x1, x2 = (left + HALF) >> XY_SHIFT, (right + HALF) >> XY_SHIFT
            if x2 >= 0 and x1 < width:
                canvas[y, max(x1, 0) : min(x2, width - 1) + 1] = value
        chain_x = [chain_x[0] + chain_dx[0], chain_x[1] + chain_dx[1]]
        y += 1
        if y > ymax:
            break


def _fill_circle(canvas: np.ndarray, cx: int, cy: int, radius: int, value: int) -> None:
    """Filled `Circle` (midpoint algorithm): horizontal spans mirrored over the octants."""
    height, width = canvas.shape[:2]
    err, dx, dy, plus, minus = 0, radius, 0, 1, 2 * radius - 1
    while dx >= dy:
        for half, rows in ((dx, (cy - dy, cy + dy)), (dy, (cy - dx, cy + dx))):
            x1, x2 = max(cx - half, 0), min(cx + half, width - 1)
            for row in rows:
                if 0 <= row < height and x1 <= x2:
                    canvas[row, x1 : x2 + 1] = value
        dy += 1
        err += plus
        plus += 2
        if err > 0:
            err -= minus
            dx -= 1
            minus -= 2


def draw_line(canvas: np.ndarray, p1: tuple[int, int], p2: tuple[int, int], value: int = 255, thickness: int = 1) -> None:
    """`cv2.line(canvas, p1, p2, value, thickness)` with LINE_8, in place on a 2-D array."""
    (x1, y1), (x2, y2) = (int(v) for v in p1), (int(v) for v in p2)
    if thickness <= 1:
        _line(canvas, (x1, y1), (x2, y2), value)
        return
    fx1, fy1, fx2, fy2 = x1 << XY_SHIFT, y1 << XY_SHIFT, x2 << XY_SHIFT, y2 << XY_SHIFT
    half_width = (thickness << (XY_SHIFT - 1)) + (thickness & 1) * XY_ONE * 0.5
    if (x1, y1) != (x2, y2):  # a zero-length line is just its two end caps
        dx, dy = float(x1 - x2), float(y2 - y1)
        scale = half_width / math.sqrt(dx * dx + dy * dy)
        ox, oy = round(dy * scale), round(dx * scale)
        corners = [(fx1 + ox, fy1 + oy), (fx1 - ox, fy1 - oy), (fx2 - ox, fy2 - oy), (fx2 + ox, fy2 + oy)]
        _fill_convex_poly(canvas, corners, value)
    radius = ((thickness << (XY_SHIFT - 1)) + HALF) >> XY_SHIFT
    for x, y in ((x1, y1), (x2, y2)):
        _fill_circle(canvas, x, y, radius, value)
