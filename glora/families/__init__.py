"""The built-in adapter families (glora.family is their interface); importing this registers them."""
from . import adaptformer, glora, noah, repadapter, vpt  # noqa: F401
