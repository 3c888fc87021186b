"""captum-ig2: IG2 and Guided Integrated Gradients as Captum attribution methods.

The classes are drop-in replacements for Captum's Integrated Gradients family: same
``attribute`` arguments, same return forms, and they work inside ``NoiseTunnel``.

- input attribution: :class:`IterativeGradientIG`, :class:`GuidedIG`
- layer attribution: :class:`LayerIterativeGradientIG`, :class:`LayerGuidedIG`
- neuron attribution: :class:`NeuronIterativeGradientIG`, :class:`NeuronGuidedIG`
- internal neuron attribution along a path: :class:`LayerPathConductance`
- a whole data set, in resumable shards, over processes or Ray: :func:`explain_dataset`
  (more in :mod:`captum_ig2.dataset`)
- how stable a map is: IG2's ``path(...).stability`` and :class:`StabilityWarning`, and
  :func:`map_stability` for any method
- the memory the complete trapezoid (IG2's default rule) keeps for its refinement:
  :func:`set_refinement_memory`
"""

from captum_ig2._attribution import AttributionPath, StabilityWarning
from captum_ig2._quadrature import ConvergenceWarning
from captum_ig2._refine import set_refinement_memory
from captum_ig2.conductance import LayerPathConductance
from captum_ig2.dataset import explain_dataset
from captum_ig2.guided_ig import GuidedIG
from captum_ig2.ig2 import IterativeGradientIG
from captum_ig2.layer import LayerGuidedIG, LayerIterativeGradientIG
from captum_ig2.neuron import NeuronGuidedIG, NeuronIterativeGradientIG
from captum_ig2.stability import map_stability

__all__ = [
    "AttributionPath",
    "ConvergenceWarning",
    "GuidedIG",
    "IterativeGradientIG",
    "LayerGuidedIG",
    "LayerIterativeGradientIG",
    "LayerPathConductance",
    "NeuronGuidedIG",
    "NeuronIterativeGradientIG",
    "StabilityWarning",
    "explain_dataset",
    "map_stability",
    "set_refinement_memory",
]
__version__ = "0.1.0"
