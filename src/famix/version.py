"""famix's version: a leaf, so that modules inside the package never import the package face for it."""

__version__ = "0.1.0"
