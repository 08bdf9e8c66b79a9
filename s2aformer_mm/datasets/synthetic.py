"""Procedurally drawn demo data sets, written in the formats of the real ones.

The pictures are learnable, not noise: every object class has its own shape and
colour (with jitter, texture and shading), drawn over varied textured
backgrounds, so a small model trained for a few hundred iterations clearly beats
its untrained self. The files follow the layouts the OpenMMLab datasets read:

* ``generate_imagenet``: ``train/<wnid>/*.JPEG``, ``val/*.JPEG``,
  ``meta/{train,val}.txt`` (``path label`` lines) -- mmpretrain ``ImageNet``.
* ``generate_ade20k``: ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` (uint8, 0 = "other"/unlabelled,
  1..150 = ADE20K classes, used with ``reduce_zero_label=True``) -- mmseg
  ``ADE20KDataset``.
* ``generate_coco``: ``{train,val}2017/*.jpg`` and
  ``annotations/instances_{train,val}2017.json`` with polygon segmentations and
  the real 80 COCO categories (ids with gaps) -- mmdet ``CocoDataset``.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np

Size = Union[int, Sequence[int]]

#: Visual styles: (shape, BGR colour). Class i of every task uses STYLES[i].
STYLES = [
    ('circle', (40, 40, 220)),     # red disc
    ('square', (220, 120, 30)),    # blue square
    ('triangle', (40, 200, 40)),   # green triangle
    ('star', (30, 220, 230)),      # yellow star
    ('hexagon', (200, 40, 200)),   # magenta hexagon
    ('diamond', (230, 230, 40)),   # cyan diamond
    ('cross', (20, 120, 250)),     # orange cross
    ('bar', (250, 250, 250)),      # white horizontal bar
    ('ring', (0, 0, 120)),         # dark red ring-like octagon
    ('tall', (120, 60, 0)),        # navy tall rectangle
]

#: ADE20K label ids (1-based, as in the annotation PNGs) used by the demo.
ADE_BACKGROUNDS = {'wall': 1, 'sky': 3, 'floor': 4, 'grass': 10}
ADE_OBJECTS = [('bed ', 8), ('person', 13), ('table', 16), ('car', 21), ('chair', 20),
               ('painting', 23)]

#: The 80 COCO categories with their real (gapped) ids and supercategories.
COCO_CATEGORIES = [
    (1, 'person', 'person'), (2, 'bicycle', 'vehicle'), (3, 'car', 'vehicle'),
    (4, 'motorcycle', 'vehicle'), (5, 'airplane', 'vehicle'), (6, 'bus', 'vehicle'),
    (7, 'train', 'vehicle'), (8, 'truck', 'vehicle'), (9, 'boat', 'vehicle'),
    (10, 'traffic light', 'outdoor'), (11, 'fire hydrant', 'outdoor'), (13, 'stop sign', 'outdoor'),
    (14, 'parking meter', 'outdoor'), (15, 'bench', 'outdoor'), (16, 'bird', 'animal'),
    (17, 'cat', 'animal'), (18, 'dog', 'animal'), (19, 'horse', 'animal'), (20, 'sheep', 'animal'),
    (21, 'cow', 'animal'), (22, 'elephant', 'animal'), (23, 'bear', 'animal'),
    (24, 'zebra', 'animal'), (25, 'giraffe', 'animal'), (27, 'backpack', 'accessory'),
    (28, 'umbrella', 'accessory'), (31, 'handbag', 'accessory'), (32, 'tie', 'accessory'),
    (33, 'suitcase', 'accessory'), (34, 'frisbee', 'sports'), (35, 'skis', 'sports'),
    (36, 'snowboard', 'sports'), (37, 'sports ball', 'sports'), (38, 'kite', 'sports'),
    (39, 'baseball bat', 'sports'), (40, 'baseball glove', 'sports'),
    (41, 'skateboard', 'sports'), (42, 'surfboard', 'sports'), (43, 'tennis racket', 'sports'),
    (44, 'bottle', 'kitchen'), (46, 'wine glass', 'kitchen'), (47, 'cup', 'kitchen'),
    (48, 'fork', 'kitchen'), (49, 'knife', 'kitchen'), (50, 'spoon', 'kitchen'),
    (51, 'bowl', 'kitchen'), (52, 'banana', 'food'), (53, 'apple', 'food'),
    (54, 'sandwich', 'food'), (55, 'orange', 'food'), (56, 'broccoli', 'food'),
    (57, 'carrot', 'food'), (58, 'hot dog', 'food'), (59, 'pizza', 'food'), (60, 'donut', 'food'),
    (61, 'cake', 'food'), (62, 'chair', 'furniture'), (63, 'couch', 'furniture'),
    (64, 'potted plant', 'furniture'), (65, 'bed', 'furniture'), (67, 'dining table', 'furniture'),
    (70, 'toilet', 'furniture'), (72, 'tv', 'electronic'), (73, 'laptop', 'electronic'),
    (74, 'mouse', 'electronic'), (75, 'remote', 'electronic'), (76, 'keyboard', 'electronic'),
    (77, 'cell phone', 'electronic'), (78, 'microwave', 'appliance'), (79, 'oven', 'appliance'),
    (80, 'toaster', 'appliance'), (81, 'sink', 'appliance'), (82, 'refrigerator', 'appliance'),
    (84, 'book', 'indoor'), (85, 'clock', 'indoor'), (86, 'vase', 'indoor'),
    (87, 'scissors', 'indoor'), (88, 'teddy bear', 'indoor'), (89, 'hair drier', 'indoor'),
    (90, 'toothbrush', 'indoor'),
]
#: COCO categories the demo draws (ids), one style each.
COCO_DEMO_IDS = [1, 3, 13, 37, 44, 53]


def _hw(size: Size) -> Tuple[int, int]:
    """``size`` is one side or ``(width, height)``; return ``(h, w)``."""
    w, h = (size, size) if isinstance(size, int) else tuple(size)
    if min(w, h) < 32:
        raise ValueError(f'image size {size} is too small: S2AFormer needs at least 32x32 inputs')
    return h, w


# --------------------------------------------------------------------------- drawing
def _texture(rng: np.random.Generator, h: int, w: int, base) -> np.ndarray:
    """A smooth textured patch around colour ``base`` (BGR), float32."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 1:  # gradient
        pattern = (xx / w - 0.5) * rng.uniform(-2, 2) + (yy / h - 0.5) * rng.uniform(-2, 2)
    else:  # blotches
        coarse = rng.normal(size=(max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
        pattern = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += pattern[..., None] * rng.uniform(8, 25)
    img += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)
    return img


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(60, 200, size=3)
    return _texture(rng, h, w, base)


def _shape_polygon(shape: str, cx: float, cy: float, r: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of ``shape`` centred at (cx, cy) with radius ``r``."""
    rot = rng.uniform(-0.25, 0.25)
    if shape == 'circle':
        n, radii, rot = 32, [1.0], 0.0
    elif shape == 'square':
        n, radii, rot = 4, [1.0], np.pi / 4 + rot
    elif shape == 'triangle':
        n, radii, rot = 3, [1.0], -np.pi / 2 + rot
    elif shape == 'star':
        n, radii, rot = 10, [1.0, 0.45], -np.pi / 2 + rot
    elif shape == 'hexagon':
        n, radii = 6, [1.0]
    elif shape == 'diamond':
        n, radii, rot = 4, [1.0], 0.0
    elif shape == 'ring':
        n, radii = 8, [1.0]
    elif shape == 'cross':
        u = r / 3
        pts = [(-u, -3 * u), (u, -3 * u), (u, -u), (3 * u, -u), (3 * u, u), (u, u), (u, 3 * u),
               (-u, 3 * u), (-u, u), (-3 * u, u), (-3 * u, -u), (-u, -u)]
        return np.array(pts, np.float32) + (cx, cy)
    elif shape in ('bar', 'tall'):
        a, b = (r, r * 0.4) if shape == 'bar' else (r * 0.45, r)
        return np.array([(-a, -b), (a, -b), (a, b), (-a, b)], np.float32) + (cx, cy)
    else:
        raise ValueError(f'unknown shape {shape!r}')
    angles = rot + 2 * np.pi * np.arange(n) / n
    rad = r * np.array([radii[i % len(radii)] for i in range(n)])
    return np.stack([cx + rad * np.cos(angles), cy + rad * np.sin(angles)], 1).astype(np.float32)


def _paint(img: np.ndarray, poly: np.ndarray, color, rng: np.random.Generator) -> np.ndarray:
    """Fill ``poly`` with a jittered, textured ``color``; return its boolean mask."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    jitter = np.asarray(color, np.float32) + rng.normal(0, 12, 3)
    tex = _texture(rng, h, w, jitter)
    m = mask.astype(bool)
    img[m] = tex[m] * 0.6 + jitter * 0.4
    return m


def _place(rng, h, w, boxes: List, r_range) -> Union[Tuple[float, float, float], None]:
    """A (cx, cy, r) that keeps the shape inside the image and off earlier shapes."""
    for _ in range(30):
        r = rng.uniform(*r_range) * min(h, w)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if all(abs(cx - bx) > r + br + 2 or abs(cy - by) > r + br + 2 for bx, by, br in boxes):
            boxes.append((cx, cy, r))
            return cx, cy, r
    return None


def _save_jpg(path: str, img: np.ndarray) -> None:
    cv2.imwrite(path, np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])


def _splits(num_train: int, num_val: int) -> Dict[str, int]:
    if num_train < 1 or num_val < 1:
        raise ValueError('need at least one training and one validation image')
    return {'train': num_train, 'val': num_val}


# --------------------------------------------------------------------------- ImageNet
def generate_imagenet(root: str, num_train: int = 200, num_val: int = 50, size: Size = 64,
                      seed: int = 0, num_classes: int = 10) -> Dict[str, int]:
    """One centred object per picture; labels 0..num_classes-1 of the 1000 classes.

    Folder names ``nXXXXXXXX`` are placeholders in the WordNet-id form (labels
    come from ``meta/*.txt``, as with the real ImageNet).
    """
    if not 1 <= num_classes <= len(STYLES):
        raise ValueError(f'num_classes must be in 1..{len(STYLES)}')
    h, w = _hw(size)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in _splits(num_train, num_val).items():
        lines = []
        os.makedirs(osp.join(root, split), exist_ok=True)
        for i in range(n):
            label = i % num_classes
            shape, color = STYLES[label]
            img = _background(rng, h, w)
            r = rng.uniform(0.22, 0.38) * min(h, w)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            _paint(img, _shape_polygon(shape, cx, cy, r, rng), color, rng)
            if split == 'train':
                wnid = f'n{label:08d}'
                os.makedirs(osp.join(root, split, wnid), exist_ok=True)
                rel = f'{wnid}/{wnid}_{i}.JPEG'
            else:
                rel = f'ILSVRC2012_val_{i + 1:08d}.JPEG'
            _save_jpg(osp.join(root, split, rel), img)
            lines.append(f'{rel} {label}')
        os.makedirs(osp.join(root, 'meta'), exist_ok=True)
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        counts[split] = n
    return counts


# --------------------------------------------------------------------------- ADE20K
def generate_ade20k(root: str, num_train: int = 200, num_val: int = 40, size: Size = 128,
                    seed: int = 0) -> Dict[str, int]:
    """Scenes of two background regions and 1-4 objects.

    Backgrounds are ADE "wall"/"sky" above a "floor"/"grass" horizon, each with
    its own colour range; objects use the first ``len(ADE_OBJECTS)`` styles. A
    2-pixel unlabelled (0) outline around objects mimics ADE's boundaries.
    """
    h, w = _hw(size)
    rng = np.random.default_rng(seed)
    bg_colors = {'wall': (150, 170, 190), 'sky': (235, 190, 120), 'floor': (60, 90, 130),
                 'grass': (50, 150, 60)}
    dirs = {'train': 'training', 'val': 'validation'}
    counts = {}
    for split, n in _splits(num_train, num_val).items():
        img_dir = osp.join(root, 'images', dirs[split])
        ann_dir = osp.join(root, 'annotations', dirs[split])
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(n):
            top, bottom = rng.choice(['wall', 'sky']), rng.choice(['floor', 'grass'])
            horizon = int(rng.uniform(0.35, 0.7) * h)
            img = np.empty((h, w, 3), np.float32)
            label = np.empty((h, w), np.uint8)
            for name, rows in ((top, slice(0, horizon)), (bottom, slice(horizon, h))):
                base = np.asarray(bg_colors[name], np.float32) + rng.normal(0, 15, 3)
                img[rows] = _texture(rng, h, w, base)[rows]
                label[rows] = ADE_BACKGROUNDS[name]
            boxes = []
            for _ in range(rng.integers(1, 5)):
                k = int(rng.integers(len(ADE_OBJECTS)))
                placed = _place(rng, h, w, boxes, (0.1, 0.22))
                if placed is None:
                    continue
                poly = _shape_polygon(STYLES[k][0], *placed, rng)
                m = _paint(img, poly, STYLES[k][1], rng)
                outline = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                label[outline & ~m] = 0
                label[m] = ADE_OBJECTS[k][1]
            name = f'ADE_{"train" if split == "train" else "val"}_{i + 1:08d}'
            _save_jpg(osp.join(img_dir, name + '.jpg'), img)
            cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
        counts[split] = n
    return counts


# --------------------------------------------------------------------------- COCO
def generate_coco(root: str, num_train: int = 120, num_val: int = 30, size: Size = 128,
                  seed: int = 0) -> Dict[str, int]:
    """1-4 non-overlapping objects per picture with boxes and polygon masks."""
    h, w = _hw(size)
    rng = np.random.default_rng(seed)
    categories = [dict(id=i, name=n, supercategory=s) for i, n, s in COCO_CATEGORIES]
    counts, ann_id = {}, 1
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split, n in _splits(num_train, num_val).items():
        img_dir = osp.join(root, f'{split}2017')
        os.makedirs(img_dir, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            image_id = (0 if split == 'train' else 500000) + i + 1
            file_name = f'{image_id:012d}.jpg'
            img = _background(rng, h, w)
            boxes = []
            for _ in range(rng.integers(1, 5)):
                k = int(rng.integers(len(COCO_DEMO_IDS)))
                placed = _place(rng, h, w, boxes, (0.1, 0.2))
                if placed is None:
                    continue
                poly = _shape_polygon(STYLES[k][0], *placed, rng)
                _paint(img, poly, STYLES[k][1], rng)
                poly = np.round(poly, 2)
                # As in COCO: the box is the polygon's extent, the area the polygon's.
                (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
                xs, ys = poly[:, 0], poly[:, 1]
                area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
                annotations.append(dict(
                    id=ann_id, image_id=image_id, category_id=COCO_DEMO_IDS[k],
                    segmentation=[poly.reshape(-1).tolist()], area=round(float(area), 2),
                    bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)], iscrowd=0))
                ann_id += 1
            _save_jpg(osp.join(img_dir, file_name), img)
            images.append(dict(id=image_id, file_name=file_name, height=h, width=w))
        coco = dict(info=dict(description='s2aformer-mm procedural demo data (COCO format)',
                              version='1.0', year=2017),
                    licenses=[], images=images, annotations=annotations, categories=categories)
        with open(osp.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
            json.dump(coco, f)
        counts[split] = n
    return counts
