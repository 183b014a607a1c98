"""Write age_reenact/face/mean_shape.py: the mean 68-point face shape, from dlib landmarks on LFW train people.

Each face's landmarks are aligned to the ArcFace 112 template by their 5 points, then averaged.
Usage: python tools/make_mean_shape.py ../shared/data/lfw [max_faces]
"""
import csv
import sys
from pathlib import Path

import numpy as np

from age_reenact.face.align import fit_to_convention, transform_points
from age_reenact.face.detect import FaceDetector
from age_reenact.face.templates import ARCFACE
from age_reenact.images import load_image, to_uint8


def main(lfw: Path, max_faces: int) -> None:
    people = [row["person"] for row in csv.DictReader(open(lfw / "people.csv")) if row["split"] == "train"]
    detector = FaceDetector(upsample=1)
    shapes = []
    for person in people:
        if len(shapes) >= max_faces:
            break
        image = to_uint8(load_image(lfw / "images" / person / f"{person}_0001.jpg")[0])
        faces = detector.detect(image)
        if len(faces) != 1:
            continue
        matrix, _ = fit_to_convention(faces[0].points5, ARCFACE, 112)
        shapes.append(transform_points(matrix, faces[0].landmarks))
    mean = np.mean(shapes, axis=0)
    rows = ",\n".join(f"        [{x:.3f}, {y:.3f}]" for x, y in mean)
    out = Path(__file__).resolve().parents[1] / "age_reenact" / "face" / "mean_shape.py"
    out.write_text(
        '"""Mean iBUG 68-point face shape in ArcFace 112 crop pixels.\n\n'
        f"Made by tools/make_mean_shape.py: dlib 68-point landmarks of {len(shapes)} LFW train people, aligned by\n"
        'their 5 points to the ArcFace template and averaged. Used to place points that a 5-point predictor lacks.\n"""\n'
        "import numpy as np\n\nMEAN_SHAPE_68 = np.array(\n    [\n" + rows + ",\n    ],\n    dtype=np.float64,\n)\n"
    )
    print(f"wrote {out} from {len(shapes)} faces")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 500)
