"""Catalogue scoring: the ``mer-score`` job, on this machine or on a Ray cluster.

What belongs here: :mod:`~app.batch.tracks` (inputs: folders, path lists, manifests, streamed),
:mod:`~app.batch.scoring` (one track through the core path, the same as ``POST /v1/predict``),
:mod:`~app.batch.output` (atomic Parquet/JSONL parts, the errors file, resume),
:mod:`~app.batch.local` (threads on every core), :mod:`~app.batch.cluster` (Ray Data) and
:mod:`~app.batch.cli` (the console script).

What it may import: :mod:`app.core`, :mod:`app.settings`, pyarrow, tqdm, and Ray (only in
:mod:`~app.batch.cluster`, imported when the Ray engine is chosen). Never the serving runtime or the
HTTP edge (``tests/test_layers.py`` checks this): a batch job has no server.
"""
