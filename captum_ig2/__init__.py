"""captum-ig2: IG2 and Guided Integrated Gradients as Captum attribution methods.

Both classes are drop-in replacements for :class:`captum.attr.IntegratedGradients`: same
``attribute`` arguments, same return forms, and they work inside ``NoiseTunnel``.
"""

from captum_ig2._attribution import AttributionPath
from captum_ig2.guided_ig import GuidedIG
from captum_ig2.ig2 import IterativeGradientIG

__all__ = ["AttributionPath", "GuidedIG", "IterativeGradientIG"]
__version__ = "0.1.0"
