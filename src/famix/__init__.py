"""famix: FAMix (Freeze, Augment, Mix) for domain-generalised semantic segmentation."""

__version__ = "0.1.0"
