"""Pictures of predictions: image | prediction | label strips, and evaluate.py's eval_images/ folder."""
import os

import cv2
import numpy as np
import torch

from dataloader.labels import TRAIN_ID_COLORS
from errors import UserError
from evaluation.metrics import upsample_labels
from experiment.folder import write_bytes, writing


def colorize(train_ids: torch.Tensor) -> torch.Tensor:
    """N×H×W train ids → N×3×H×W uint8 colours (Cityscapes palette)."""
    palette = torch.as_tensor(TRAIN_ID_COLORS, device=train_ids.device)
    return palette[train_ids.long().clamp(0, 255)].permute(0, 3, 1, 2)  # long: a uint8 index would be a mask


def strip(image: torch.Tensor, prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """One 3×H×3W uint8 picture: image | prediction | label, at the network input size (uint8 as the PNG it
    becomes: a quarter of the memory of float strips)."""
    label = upsample_labels(label[None], image.shape[-2:])[0]
    return torch.cat((image.to(prediction.device), colorize(prediction[None])[0], colorize(label[None])[0]), dim=2)


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an H×W×3 uint8 RGB array as PNG, atomically."""
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f'could not encode the image {path} as PNG')
    write_bytes(path, png.tobytes())  # written by Python: a failed write names its errno


def save_strips(folder: str, strips) -> None:
    """eval_images/<domain>/img_<i>.png."""
    for domain, pictures in strips.items():
        domain_dir = os.path.join(folder, 'eval_images', domain)
        with writing('the evaluation images', domain_dir):
            os.makedirs(domain_dir, exist_ok=True)
        for i, picture in enumerate(pictures):
            write_png(os.path.join(domain_dir, f'img_{i}.png'), picture.permute(1, 2, 0).numpy())
