"""Measuring accuracy against compute: ``ponder eval`` (:mod:`.evaluate`), accuracy curves from
sample pools (:mod:`.curves`) and ``ponder flops`` (:mod:`.flops`)."""
