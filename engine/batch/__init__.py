"""Batch runs: a model over an archive (a folder, zip or manifest), sharded, resumable, every image once."""
