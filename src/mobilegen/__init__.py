"""mobilegen: trained efficient diffusion checkpoints -> validated mobile artifacts."""

__version__ = "0.1.0"
