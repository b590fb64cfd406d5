"""Data for minidl: dataset loaders, image folders, OpenCV transforms, a batching loader, a toy set."""

from .datasets import DatasetError, DatasetNotFoundError, load_fashion_mnist, load_mnist, read_idx
from .image_folder import UnreadableImageError, image_dataset_from_directory
from .loader import DataLoader
from .shapes import SHAPE_NAMES, make_shapes
from .transforms import (
    CenterCrop,
    Compose,
    ElasticDeformation,
    Grayscale,
    Normalize,
    RandomAffine,
    RandomBrightnessContrast,
    RandomCrop,
    RandomFlip,
    RandomRotation,
    Resize,
    Rotate,
)

__all__ = [
    "CenterCrop", "Compose", "DataLoader", "DatasetError", "DatasetNotFoundError", "ElasticDeformation",
    "Grayscale", "Normalize", "RandomAffine", "RandomBrightnessContrast", "RandomCrop", "RandomFlip",
    "RandomRotation", "Resize", "Rotate", "SHAPE_NAMES", "UnreadableImageError", "image_dataset_from_directory",
    "load_fashion_mnist", "load_mnist", "make_shapes", "read_idx",
]
