"""The recording side: noisy networks, data sets, the recorder, and the paper's experiments.

* :mod:`ibframe.recording.nn`: noisy networks (Gaussian noise after hidden layers) and the
  paper's models;
* :mod:`ibframe.recording.datasets`: the data sets, none downloaded;
* :mod:`ibframe.recording.recorder`: :class:`Recorder`, which writes S_l of named modules of any
  ``torch.nn.Module`` into a run store while it trains;
* :mod:`ibframe.recording.experiments`: the paper's set-ups and :func:`train`, behind
  ``ibframe train``; :mod:`ibframe.recording.spec` declares what an experiment is.
"""

from __future__ import annotations

from ibframe.recording.recorder import Recorder, RecordSchedule, classification_metrics
from ibframe.recording.spec import ExperimentSpec, TrainSettings

__all__ = ["ExperimentSpec", "RecordSchedule", "Recorder", "TrainSettings", "classification_metrics"]
