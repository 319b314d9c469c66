"""Adapters that run the two passes of SAM/ASAM/F-SAM correctly inside training frameworks.

One module per framework; none is imported here, so ``import friendly_sam`` (and this package) never
imports PyTorch Lightning, transformers, accelerate or timm. Import the one you use::

    from friendly_sam.integrations.lightning import SAMLightningMixin, sam_manual_step
    from friendly_sam.integrations.transformers import SAMTrainer
    from friendly_sam.integrations.accelerate import AcceleratedSAM
    from friendly_sam.integrations.timm import register_timm

See ``docs/integrations.md``.
"""
