"""Pure compute: arrays and a loaded model in, results out. No store, no files, no cases."""
