"""face3d: the 3D core of the toolkit (morphable models, camera, lighting, rendering,
landmark fitting, texture, detail and export)."""
from face3d.morphable_model import ModelArrays, MorphableModel, load_model_arrays, save_model_arrays

__all__ = ["ModelArrays", "MorphableModel", "load_model_arrays", "save_model_arrays"]
__version__ = "0.1.0"
