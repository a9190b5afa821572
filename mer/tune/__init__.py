"""``mer tune``: choose a training recipe by cross-validation on Ray Tune.

:mod:`mer.tune.search` turns the job's ``tune.space`` into Ray Tune trials, each
a K-fold cross-validation on the labeled train split (:mod:`mer.train.crossval`),
and resumes a killed search; :mod:`mer.tune.results` writes the table, the plot
and ``best.yaml``. The test split is never read.
"""

from mer.tune.search import tune_job

__all__ = ["tune_job"]
