"""Write weights/face_detector/mtcnn.safetensors from facenet-pytorch's MTCNN weights (MIT licence).

facenet-pytorch pins an old torch, so it is never installed: download its wheel and unpack it instead.
    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/wheels && unzip /tmp/wheels/facenet_pytorch-2.6.0-*.whl -d /tmp/fn
    python tools/convert_mtcnn.py /tmp/fn/facenet_pytorch/data
The .pt files are plain state dicts, opened with weights_only=True.
"""
import sys
from pathlib import Path

import torch

from age_reenact.face.mtcnn import MTCNN
from age_reenact.face.detect import MTCNN_WEIGHTS
from age_reenact.weights import load_state_dict_strict, save_weights

PREPROCESSING = {
    "input": "RGB uint8 frame, (x - 127.5) / 128",
    "resample": "area (pyramid levels and the 24/48 px crops)",
    "output": "boxes x0 y0 x1 y1 px, O-Net probability, 5 points: eye centres (image left, right), nose tip, mouth corners",
}


def main(data: Path) -> None:
    state_dict = {}
    for net in ("pnet", "rnet", "onet"):
        for key, value in torch.load(data / f"{net}.pt", map_location="cpu", weights_only=True).items():
            state_dict[f"{net}.{key}"] = value
    model = MTCNN()
    load_state_dict_strict(model, state_dict, source=str(data))  # checks every key and shape
    provenance = {
        "source": "facenet-pytorch 2.6.0 wheel, facenet_pytorch/data/{pnet,rnet,onet}.pt (MIT, (c) 2019 Timothy Esler)",
        "origin": "MTCNN by Kaipeng Zhang et al. 2016 (MIT), via davidsandberg/facenet (MIT)",
        "converter": "tools/convert_mtcnn.py",
    }
    path = save_weights(MTCNN_WEIGHTS, model.state_dict(), "mtcnn", {"thresholds": list(model.thresholds), "pyramid_factor": model.pyramid_factor}, PREPROCESSING, provenance)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
