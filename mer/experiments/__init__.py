"""Experiments: runs of many job variants that answer a question (the ``ablation`` stage).

A variant is the job with a few keys replaced (:func:`mer.config.with_values`),
run in its own folder and sharing the job's fit cache. Training goes through
:mod:`mer.train` and :mod:`mer.selftrain`; :mod:`mer.report` only renders.
"""
