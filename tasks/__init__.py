"""Built-in tasks with exact answers: the arithmetic task (:mod:`.arith`) that the default
``arith`` models are trained and evaluated on."""
