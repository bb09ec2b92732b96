"""An example ibframe estimator plugin: how saturated each layer's units are."""

from ibframe_saturation.estimators import Saturation

__all__ = ["Saturation"]
