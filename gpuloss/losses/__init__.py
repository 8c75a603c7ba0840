"""Loss definitions, one module per family. Importing this package fills the registry."""

from . import hinge, metric_learning, probabilistic, regression, segmentation, similarity  # noqa: F401
