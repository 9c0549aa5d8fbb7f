"""Image and dataset loading."""

from diffrl.data.images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_image, load_image_tensor, pil_to_tensor

__all__ = ["IMAGE_EXTENSIONS", "ImageLoadError", "list_images", "load_image", "load_image_tensor", "pil_to_tensor"]
