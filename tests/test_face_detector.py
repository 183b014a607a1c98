"""The default face detector (MTCNN): the bundled samples, the confidence floor, and its weights file."""
import shutil

import numpy as np
import pytest
import torch

from age_reenact.face import detect
from age_reenact.face.crop import detect_crops
from age_reenact.face.detect import FaceDetector, FaceModelsMissing, load_mtcnn
from age_reenact.face.templates import five_points_from_68
from age_reenact.images import to_uint8
from age_reenact.weights import read_weights


def default_inputs(node_class) -> dict:
    """A node's widget defaults, as a fresh node in ComfyUI has them."""
    inputs = {}
    for name, (kind, *options) in node_class.INPUT_TYPES()["required"].items():
        if options and "default" in options[0]:
            inputs[name] = options[0]["default"]
        elif isinstance(kind, list):
            inputs[name] = kind[0]
    return inputs


def test_default_face_crop_takes_einstein_not_the_seated_man(pack, einstein):
    image, labels = einstein
    node = pack.NODE_CLASS_MAPPINGS["AgeReenactFaceCrop"]
    _, face_crop = node().crop(image=image, **default_inputs(node))
    assert len(face_crop) == 1
    truth = five_points_from_68(labels)
    error = np.linalg.norm(face_crop.points5[0] - truth, axis=1).mean() / np.linalg.norm(labels[36] - labels[45])
    assert error < 0.15, f"the chosen face is {error:.2f} outer-eye distances from Einstein's"


@pytest.mark.parametrize("variant", ["mirrored", "scaled 3/4"])
def test_einstein_is_found_mirrored_and_scaled(einstein, variant):
    # R-Net's 0.7 threshold dropped him in both (mtcnn.MTCNN keeps windows from 0.6).
    image, labels = einstein
    frame, centre = to_uint8(image[0]), labels.mean(0)
    if variant == "mirrored":
        frame, centre = frame[:, ::-1].copy(), np.array([frame.shape[1] - 1 - centre[0], centre[1]])
    else:
        frame = to_uint8(torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), scale_factor=0.75, mode="bilinear", antialias=True).permute(0, 2, 3, 1)[0])
        centre = centre * 0.75
    x0, y0, x1, y1 = max(FaceDetector().detect(frame), key=lambda f: f.area).box
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1


def test_astronaut_has_exactly_one_face(astronaut):
    faces = FaceDetector().detect(to_uint8(astronaut[0]))
    assert len(faces) == 1  # the mission patch at the lower left is no face
    x0, y0, x1, y1 = faces[0].box
    assert x0 < 222 < x1 and y0 < 120 < y1 and faces[0].score >= detect.MIN_SCORE["mtcnn"]


def test_faces_below_the_confidence_floor_are_dropped_and_never_largest(astronaut, monkeypatch):
    detector = FaceDetector()
    # A big low-confidence box and the real (smaller) face: only the real one passes the floor.
    big = np.array([[0.0, 0.0, 400.0, 400.0]])
    monkeypatch.setattr(detector._mtcnn, "detect", lambda frame, min_face: (np.vstack([big, [[179.0, 60.0, 269.0, 175.0]]]), np.array([0.8, 0.99]), None))
    assert [round(s, 2) for _, s in detector.boxes(to_uint8(astronaut[0]))] == [0.99]
    largest = detect_crops(astronaut, detector, "arcface", 112, choice="largest")
    assert 179 < largest.points5[0][:, 0].mean() < 269
    lenient = FaceDetector(min_score=0.5)
    monkeypatch.setattr(lenient, "_mtcnn", detector._mtcnn)
    assert len(lenient.boxes(to_uint8(astronaut[0]))) == 2


def test_bundled_mtcnn_weights_load_with_their_metadata():
    weights = read_weights(detect.MTCNN_WEIGHTS, "mtcnn")
    assert detect.MTCNN_WEIGHTS.stat().st_size < 15e6
    assert "127.5" in weights.preprocessing["input"] and "MIT" in weights.provenance["source"]
    model = load_mtcnn()
    assert sum(p.numel() for p in model.parameters()) == 495_850  # P-, R- and O-net, all loaded strictly
    assert detect.MTCNN_WEIGHTS.with_suffix(".md").is_file()  # the card with the licence


def test_missing_detector_weights_name_the_file_and_folder(tmp_path):
    with pytest.raises(FaceModelsMissing, match=rf"mtcnn\.safetensors is missing from {tmp_path}"):
        load_mtcnn(tmp_path / "mtcnn.safetensors")


def test_hog_stays_available(astronaut):
    faces = FaceDetector(detector="hog").detect(to_uint8(astronaut[0]))
    assert len(faces) >= 1
    with pytest.raises(ValueError, match="detector must be one of"):
        FaceDetector(detector="yolo")


def test_loading_the_detector_leaves_the_random_stream_alone(tmp_path):
    # Training runs that build their face cache must continue exactly like runs that load it.
    path = tmp_path / "mtcnn.safetensors"
    shutil.copy(detect.MTCNN_WEIGHTS, path)  # a new path: not the cached model
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_mtcnn(path)
    assert torch.equal(torch.rand(3), expected)
