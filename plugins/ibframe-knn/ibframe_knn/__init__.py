"""ibframe-knn: k-nearest-neighbour baselines (Kozachenko-Leonenko, KSG) as ibframe estimators.

Installing the distribution registers ``knn-entropy`` and ``ksg-mi`` with ibframe through the
``ibframe`` entry point; nothing needs importing::

    ibframe estimate run.zarr -e ksg-mi -e sp-mi
"""

from __future__ import annotations

from ibframe_knn.estimators import KnnEntropy, KsgMutualInformation
from ibframe_knn.kernels import kl_entropy, ksg_mi, ksg_mi_discrete

__all__ = ["KnnEntropy", "KsgMutualInformation", "kl_entropy", "ksg_mi", "ksg_mi_discrete"]
