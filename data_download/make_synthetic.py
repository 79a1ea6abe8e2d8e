"""Seeded synthetic two-domain street scenes for the demo and the tests.

Source domain: `gta5` (GTA-5 layout, palette label PNGs read `fromrgb`) + `gta5_full_split/train.json`.
Target domain: `cityscapes` (train + val, left/right images, gtFine labelIds) and `cityscapes_sequence`
(the same left/right images in the sequence layout). Both domains draw scenes from one layout
distribution; the target only looks different (colour cast, lower contrast, brighter, blur, noise),
a global change that re-estimated BatchNorm statistics can largely undo.
ACDC conditions: `acdc` (fog, night, rain, snow; train + val) made from the target's left images and labels.
Usage: python data_download/make_synthetic.py --out DIR [--height 64 --width 128 --seed 0 ...]
"""
import argparse
import os
import sys

import cv2
import numpy as np
from PIL import Image

if __package__ in (None, ''):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataloader.datasets import DATASETS  # noqa: E402
from dataloader.labels import CITYSCAPES_LABELS  # noqa: E402
from errors import UserError, run_cli  # noqa: E402
from experiment.folder import write_bytes  # noqa: E402

# Cityscapes label ids of the classes drawn
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 7, 8, 11, 17, 20, 21, 22, 23, 24, 26


def cityscapes_palette() -> np.ndarray:
    """GTA-5 style palette (256x3 RGB): index = Cityscapes label id, colour = that label's Cityscapes colour."""
    palette = np.zeros((256, 3), np.uint8)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            palette[label.id] = label.color
    return palette


PALETTE = cityscapes_palette()

# appearance per class: base RGB, per-instance colour spread, pixel noise amplitude
APPEARANCE = {ROAD: ((95, 85, 100), 8, 5), SIDEWALK: ((175, 145, 150), 10, 8),
              BUILDING: ((150, 110, 85), 22, 6), POLE: ((130, 130, 140), 10, 3),
              SIGN: ((230, 200, 30), 10, 4), VEGETATION: ((55, 125, 40), 12, 22),
              TERRAIN: ((160, 175, 80), 10, 12), SKY: ((125, 175, 235), 10, 2),
              PERSON: ((200, 40, 70), 25, 8), CAR: ((35, 50, 160), 25, 5)}

# target appearance shift: RGB gains, contrast around mid-grey, brightness offset, blur sigma, noise sigma
TARGET_GAIN = np.array([1.15, 0.95, 0.6], np.float32)
TARGET_CONTRAST = 0.55
TARGET_BRIGHTNESS = 45.0
TARGET_BLUR_SIGMA = 0.8
TARGET_NOISE = 5.0
STEREO_SHIFT = 4  # pixels between the left and the right view
TARGET_CITIES = {'train': 'lindenau', 'val': 'velden'}
ACDC_CONDITIONS = ('fog', 'night', 'rain', 'snow')
ACDC_SEQUENCES = {'train': 'GOPR0001', 'val': 'GOPR0002'}
CONDITION_DOMAIN = 100  # scene_rng domains of the conditions start here, apart from the source's and target's


class Canvas:
    """Label ids and RGB colours of one scene, painted back to front."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.ids = np.zeros((height, width), np.uint8)
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.rng = rng
        self.height, self.width = height, width

    def colour(self, label: int) -> np.ndarray:
        base, spread, _ = APPEARANCE[label]
        return np.asarray(base, np.float32) + self.rng.normal(0.0, spread, 3).astype(np.float32)

    def paint(self, label: int, mask: np.ndarray) -> None:
        """Give the pixels of mask the label and one instance colour plus class-typical pixel noise."""
        count = int(mask.sum())
        if count == 0:
            return
        colour = self.colour(label)
        noise = self.rng.normal(0.0, APPEARANCE[label][2], (count, 1)).astype(np.float32)
        self.ids[mask] = label
        self.rgb[mask] = colour + noise

    def box(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """A boolean mask of rows top..bottom-1 and columns left..right-1, clipped to the canvas."""
        mask = np.zeros((self.height, self.width), bool)
        mask[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
        return mask


def draw_background(canvas: Canvas, horizon: int, rows: np.ndarray, cols: np.ndarray) -> tuple:
    """Sky and ground (road in a perspective trapezoid, sidewalks, terrain beyond them).

    Returns the vanishing column and, per row, the half widths of the road and of road plus sidewalks.
    """
    height, width, rng = canvas.height, canvas.width, canvas.rng
    canvas.paint(SKY, np.ones((height, width), bool))
    canvas.rgb += (rows / height)[:, :, None] * np.float32(40.0)  # sky brighter towards the horizon

    vanish = width * rng.uniform(0.4, 0.6)
    depth = np.clip((rows - horizon) / max(height - horizon, 1), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom
    road_half = width * (0.03 + rng.uniform(0.35, 0.5) * depth)
    walk_half = road_half + width * (0.01 + rng.uniform(0.2, 0.35) * depth)
    ground = rows >= horizon
    canvas.paint(TERRAIN, ground)
    canvas.paint(SIDEWALK, ground & (np.abs(cols - vanish) < walk_half))
    canvas.paint(ROAD, ground & (np.abs(cols - vanish) < road_half))
    lane = ground & (np.abs(cols - vanish) < 0.6 + 1.2 * depth) & ((rows // 3) % 2 == 0) & (depth > 0.15)
    canvas.rgb[lane] = 215.0  # lane markings belong to the road class
    return vanish, road_half[:, 0], walk_half[:, 0]


def draw_skyline(canvas: Canvas, horizon: int) -> None:
    """Buildings with window grids and groups of trees along the horizon."""
    height, width, rng = canvas.height, canvas.width, canvas.rng
    x = int(-rng.uniform(0, 0.1) * width)
    while x < width:
        block = int(width * rng.uniform(0.1, 0.3)) + 2
        top = int(horizon - height * rng.uniform(0.12, 0.45))
        if rng.random() < 0.75:
            canvas.paint(BUILDING, canvas.box(top, horizon, x, x + block))
            window = canvas.box(top + 2, horizon - 2, x + 1, x + block - 1)
            window &= (np.arange(height)[:, None] % 4 < 2) & (np.arange(width)[None, :] % 4 < 2)
            canvas.rgb[window] *= np.float32(0.55)  # darker windows keep the building label
        else:
            draw_tree(canvas, x + block / 2, horizon, block / 2, horizon - top)
        x += block


def draw_tree(canvas: Canvas, centre_x: float, base_y: int, radius_x: float, crown_height: float) -> None:
    """An elliptic crown of vegetation standing on base_y."""
    rows, cols = np.ogrid[:canvas.height, :canvas.width]
    centre_y = base_y - crown_height / 2
    crown = ((cols - centre_x) / max(radius_x, 1.0)) ** 2 + ((rows - centre_y) / max(crown_height / 2, 1.0)) ** 2
    canvas.paint(VEGETATION, crown <= 1.0)


def place_on_ground(canvas: Canvas, horizon: int, low: float, high: float) -> tuple:
    """A random foot row between fractions low and high of the ground and its perspective scale (0 far, 1 near)."""
    ground = canvas.height - horizon
    foot = min(int(canvas.rng.uniform(horizon + low * ground, horizon + high * ground)), canvas.height - 1)
    return foot, (foot - horizon) / max(ground, 1)


def draw_pole(canvas: Canvas, foot: int, scale: float, x: float) -> None:
    """A pole standing at x, with a traffic sign on top half of the time."""
    pole_height = int(canvas.height * (0.15 + 0.6 * scale))
    thick = max(1, int(round(1 + 2 * scale)))
    left = int(x)
    canvas.paint(POLE, canvas.box(foot - pole_height, foot, left, left + thick))
    if canvas.rng.random() < 0.5:
        sign = max(2, int(3 + 5 * scale))
        top = foot - pole_height
        canvas.paint(SIGN, canvas.box(top, top + sign, left - sign // 2, left - sign // 2 + sign))


def draw_person(canvas: Canvas, foot: int, scale: float, x: float) -> None:
    """A person (clothes colour, skin-coloured head) standing at x."""
    person_height = int(canvas.height * (0.08 + 0.35 * scale)) + 3
    person_width = max(2, person_height // 3)
    left = int(x - person_width / 2)
    canvas.paint(PERSON, canvas.box(foot - person_height, foot, left, left + person_width))
    head = canvas.box(foot - person_height, foot - person_height + person_height // 5 + 1, left, left + person_width)
    canvas.rgb[head] = (210.0, 170.0, 140.0)


def car_width(canvas: Canvas, scale: float) -> int:
    return int(canvas.width * (0.05 + 0.22 * scale)) + 4


def draw_car(canvas: Canvas, foot: int, scale: float, x: float) -> None:
    """A car seen from behind, centred at x: body, darker windows and wheels (all labelled car)."""
    car_width_px = car_width(canvas, scale)
    car_height = car_width_px // 2 + 2
    left = int(x - car_width_px / 2)
    right = left + car_width_px
    canvas.paint(CAR, canvas.box(foot - car_height, foot, left, right))
    is_car = canvas.ids == CAR
    cabin = canvas.box(foot - car_height, foot - car_height + max(car_height // 3, 1),
                       left + car_width_px // 5, right - car_width_px // 5)
    canvas.rgb[cabin & is_car] = (60.0, 70.0, 90.0)
    canvas.rgb[canvas.box(foot - max(car_height // 4, 1), foot, left, right) & is_car] *= np.float32(0.3)


def draw_objects(canvas: Canvas, horizon: int, vanish: float, road_half: np.ndarray, walk_half: np.ndarray) -> None:
    """Trees, poles and persons on the sidewalks and cars on the road, painted far to near."""
    rng = canvas.rng
    counts = {'tree': (0, 3, 0.05, 0.5), 'pole': (1, 4, 0.1, 0.9), 'person': (0, 4, 0.15, 0.95),
              'car': (1, 5, 0.1, 1.0)}  # kind: (min count, max count + 1, nearest and farthest ground fraction)
    objects = [(kind,) + place_on_ground(canvas, horizon, low, high)
               for kind, (least, most, low, high) in counts.items() for _ in range(rng.integers(least, most))]
    for kind, foot, scale in sorted(objects, key=lambda item: item[1]):
        side = rng.choice((-1.0, 1.0))
        road, walk = road_half[foot], walk_half[foot]
        if kind == 'tree':
            radius = canvas.width * (0.04 + 0.1 * scale)
            draw_tree(canvas, vanish + side * (walk + radius * 0.5), foot, radius, canvas.height * (0.2 + 0.4 * scale))
        elif kind == 'car':
            free = max(road - car_width(canvas, scale) / 2, 0)  # keep the car on the road
            draw_car(canvas, foot, scale, vanish + rng.uniform(-0.8, 0.8) * free)
        else:
            x = vanish + side * (road + rng.uniform(0.2, 0.8) * (walk - road))
            (draw_pole if kind == 'pole' else draw_person)(canvas, foot, scale, x)


def render_scene(height: int, width: int, rng: np.random.Generator) -> tuple:
    """One street scene: label ids (HxW uint8, Cityscapes ids) and RGB colours (HxWx3 float32, 0..255)."""
    canvas = Canvas(height, width, rng)
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    horizon = int(height * rng.uniform(0.38, 0.55))
    vanish, road_half, walk_half = draw_background(canvas, horizon, rows, cols)
    draw_skyline(canvas, horizon)
    draw_objects(canvas, horizon, vanish, road_half, walk_half)
    canvas.rgb *= np.float32(rng.uniform(0.85, 1.15))  # per-image illumination
    return canvas.ids, canvas.rgb


def shift_to_target(rgb: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The target domain's look: colour cast `gain`, lower contrast, brighter, slightly blurred and noisy."""
    shifted = ((rgb - 128.0) * TARGET_CONTRAST + 128.0 + TARGET_BRIGHTNESS) * gain
    shifted = cv2.GaussianBlur(shifted, (0, 0), TARGET_BLUR_SIGMA)
    return shifted + rng.normal(0.0, TARGET_NOISE, shifted.shape).astype(np.float32)


def to_bgr_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)[:, :, ::-1])


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode('.png', image)
    assert ok, 'PNG encoding of an in-memory array cannot fail'
    return encoded.tobytes()


def palette_png(ids: np.ndarray, path: str) -> None:
    """A palette PNG whose index is the label id and whose palette holds the Cityscapes colours (like GTA-5)."""
    image = Image.fromarray(ids, mode='P')
    image.putpalette(PALETTE.flatten().tolist())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, optimize=False)


def scene_rng(seed: int, domain: int, index: int) -> np.random.Generator:
    """An independent generator per image, so every file depends only on (seed, domain, index)."""
    return np.random.default_rng([seed, domain, index])


def write_source(root: str, count: int, height: int, width: int, seed: int) -> None:
    """GTA-5 layout: gta5/images/<n>.png and gta5/labels/<n>.png."""
    for index in range(count):
        ids, rgb = render_scene(height, width, scene_rng(seed, 0, index))
        name = f'{index:05d}.png'
        write_bytes(os.path.join(root, 'gta5', 'images', name), png_bytes(to_bgr_uint8(rgb)))
        palette_png(ids, os.path.join(root, 'gta5', 'labels', name))


def write_target(root: str, split: str, count: int, height: int, width: int, seed: int, domain: int,
                 shifted: bool = True) -> None:
    """Cityscapes layout (left, right, gtFine labelIds) and the same views in the sequence layout.

    shifted=False keeps the source appearance: the same layout, to measure a model on its own domain.
    """
    city = TARGET_CITIES[split]
    for index in range(count):
        rng = scene_rng(seed, domain, index)
        ids, rgb = render_scene(height, width + STEREO_SHIFT, rng)
        gain = TARGET_GAIN * rng.uniform(0.93, 1.07, 3).astype(np.float32)  # the cast varies a little per scene
        left, right = rgb[:, STEREO_SHIFT:], rgb[:, :width]
        if shifted:
            left, right = shift_to_target(left, gain, rng), shift_to_target(right, gain, rng)
        left, right = to_bgr_uint8(left), to_bgr_uint8(right)
        stem = f'{city}_{index:06d}_000019'
        views = {'leftImg8bit': png_bytes(left), 'rightImg8bit': png_bytes(right)}
        for kind, data in views.items():
            write_bytes(os.path.join(root, 'cityscapes', kind, split, city, f'{stem}_{kind}.png'), data)
            write_bytes(os.path.join(root, 'cityscapes_sequence', f'{kind}_sequence', split, city,
                                     f'{stem}_{kind}.png'), data)
        write_bytes(os.path.join(root, 'cityscapes', 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'),
                    png_bytes(np.ascontiguousarray(ids[:, STEREO_SHIFT:])))


def condition_look(condition: str, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image of the target (HxWx3 float32 RGB) under an ACDC condition: fog blends it with grey, night darkens
    it, rain adds bright streaks and noise, snow bright speckles."""
    height, width = rgb.shape[:2]
    if condition == 'fog':
        density = np.float32(rng.uniform(0.5, 0.65))
        return rgb * (1 - density) + 200.0 * density
    if condition == 'night':
        return rgb * np.float32(rng.uniform(0.2, 0.3)) * np.array([0.9, 0.95, 1.2], np.float32)
    if condition == 'rain':
        streaks = np.zeros((height, width), np.float32)
        for _ in range(height * width // 64):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(streaks, (x, y), (x + 2, y + 7), 1.0, 1)
        noisy = rgb * np.float32(0.8) + rng.normal(0.0, 8.0, rgb.shape).astype(np.float32)
        return noisy + streaks[:, :, None] * np.float32(90.0)
    speckles = (rng.random((height, width)) < 0.04).astype(np.float32)  # snow
    return rgb * np.float32(0.9) + np.float32(30.0) + speckles[:, :, None] * np.float32(255.0)


def write_conditions(root: str, seed: int) -> dict:
    """ACDC's layout (rgb_anon/<condition>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png and the gt labelIds) for each
    condition and split, from the cityscapes target's left images and labels on disk, and its index; returns samples
    per split. Its randomness comes from generators of its own, so the other files do not change."""
    for number, condition in enumerate(ACDC_CONDITIONS):
        for split, city in TARGET_CITIES.items():
            left_dir = os.path.join(root, 'cityscapes', 'leftImg8bit', split, city)
            sequence = ACDC_SEQUENCES[split]
            for index, name in enumerate(sorted(os.listdir(left_dir))):
                stem = name[:-len('_leftImg8bit.png')]
                rgb = cv2.imread(os.path.join(left_dir, name))[:, :, ::-1].astype(np.float32)
                rng = scene_rng(seed, CONDITION_DOMAIN + 2 * number + (split == 'val'), index)
                frame = f'{sequence}_frame_{index:06d}'
                write_bytes(os.path.join(root, 'acdc', 'rgb_anon', condition, split, sequence, f'{frame}_rgb_anon.png'),
                            png_bytes(to_bgr_uint8(condition_look(condition, rgb, rng))))
                with open(os.path.join(root, 'cityscapes', 'gtFine', split, city, f'{stem}_gtFine_labelIds.png'),
                          'rb') as label:
                    write_bytes(os.path.join(root, 'acdc', 'gt', condition, split, sequence,
                                             f'{frame}_gt_labelIds.png'), label.read())
    return DATASETS['acdc'].build_index(root)


def make_synthetic(root: str, height: int = 64, width: int = 128, num_source: int = 400,
                   num_target_train: int = 200, num_target_val: int = 100, seed: int = 0,
                   shifted: bool = True, conditions: bool = True) -> dict:
    """Write both domains and their JSON files under root (used as UBNA_DIR_DATASET); returns samples per split of
    the source and target datasets.

    shifted=False writes the cityscapes folders in the source appearance (the source domain's validation set).
    conditions: also write the ACDC conditions (write_conditions), after everything else.
    """
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise UserError(f"synthetic image size {height}x{width} must be positive multiples of 32.")
    if min(num_source, num_target_train, num_target_val) < 1:
        raise UserError("every synthetic image count (--num-source, --num-target-train, --num-target-val) "
                        "must be at least 1.")
    os.makedirs(root, exist_ok=True)
    write_source(root, num_source, height, width, seed)
    write_target(root, 'train', num_target_train, height, width, seed, 1, shifted)
    write_target(root, 'val', num_target_val, height, width, seed, 2, shifted)
    counts = {'gta5_full_split': DATASETS['gta5'].build_index(root),
              'cityscapes': DATASETS['cityscapes'].build_index(root),
              'cityscapes_sequence': DATASETS['cityscapes_sequence'].build_index(root)}
    if conditions:
        write_conditions(root, seed)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Write the synthetic source (gta5) and target (cityscapes) domains.')
    parser.add_argument('--out', required=True, help='output folder, used as UBNA_DIR_DATASET')
    parser.add_argument('--height', type=int, default=64)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--num-source', type=int, default=400)
    parser.add_argument('--num-target-train', type=int, default=200)
    parser.add_argument('--num-target-val', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--source-look', action='store_true',
                        help='write the cityscapes folders in the source appearance (a source-domain validation set)')
    parser.add_argument('--no-conditions', action='store_true',
                        help='skip the ACDC conditions (fog, night, rain, snow) made from the target')
    args = parser.parse_args(argv)
    counts = make_synthetic(args.out, args.height, args.width, args.num_source, args.num_target_train,
                            args.num_target_val, args.seed, shifted=not args.source_look, conditions=False)
    if not args.no_conditions:
        counts['acdc'] = write_conditions(args.out, args.seed)
    for dataset, splits in counts.items():
        print(f"{dataset}: " + ', '.join(f'{split} {count}' for split, count in splits.items()))


if __name__ == '__main__':
    sys.exit(run_cli(main))
