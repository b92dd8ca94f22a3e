"""Offline training (``ponder train``): the arith policy (:mod:`.train_policy`), PRM labels and
models (:mod:`.mc_labels`, :mod:`.checker_labels`, :mod:`.prm`, :mod:`.prm_model`), the value
head, revisions (:mod:`.revise`), confidence calibration, ``auto``'s plan table (:mod:`.plan`)
and the quality report. Nothing here runs inside a worker."""
