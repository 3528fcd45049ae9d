"""Jobs: one queue of background work (training, explanation audits) and the processes that run it."""
