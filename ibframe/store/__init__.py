"""The run store: one training run as a Zarr v3 group that plain xarray can open.

Layout (``ibframe_format`` 2; docs/store-format.md is the reference)::

    RUN.zarr/                 attrs: ibframe_format, ibframe_version, created, beta, noise, draws,
                                     layers, epochs, metrics, params (what is committed), model,
                                     dataset, seed, ...
      data/                   x (sample, feature...), y (sample), split (sample; 0 train, 1 test)
      layers/<name>/          epoch (epoch), S (epoch, sample, unit): pre-noise outputs, draw 0
                              S_cond (epoch, cond_sample, draw, unit): the conditional draws,
                              cond_sample (cond_sample): the sample index of each conditional row
                              (both absent in a layer that is a function of x alone)
      metrics/                epoch (epoch), <metric> (epoch)
      params/                 epoch (epoch), <parameter> (epoch, ...)
      results/<estimator>/<key>/<layer>/   cached estimator results (see ibframe.engine)

Every array's chunks have length 1 along ``epoch``, so appending an epoch writes new chunks and
never rewrites old ones. An epoch is committed by one write of the root attributes (``epochs``,
``metrics``, ``params``) after all of its arrays are written; ``create_run`` commits the store
itself the same way, writing ``ibframe_format`` last. Every chunk carries a CRC-32C and every
chunk of a committed epoch exists, which each read checks (:mod:`ibframe.store.integrity`). One
writer at a time holds the store's lock (:mod:`ibframe.store.lock`); readers take none. A store
is a local directory or a URL (``s3://...``, ``memory://...``): :mod:`ibframe.store.location`.

Modules: :mod:`~ibframe.store.layout` (format constants, names, value checks),
:mod:`~ibframe.store.location`, :mod:`~ibframe.store.lock`, :mod:`~ibframe.store.integrity`,
:mod:`~ibframe.store.run`
(:class:`Run`, :func:`open_run`) and :mod:`~ibframe.store.create` (:func:`create_run`).
"""

from ibframe.store.create import create_run
from ibframe.store.layout import FORMAT, READABLE_FORMATS, summarise_epochs
from ibframe.store.run import Run, open_run

__all__ = ["FORMAT", "READABLE_FORMATS", "Run", "create_run", "open_run", "summarise_epochs"]
