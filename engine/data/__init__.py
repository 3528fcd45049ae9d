"""Datasets: the catalogue of training/evaluation datasets, dataset-specific matching, reviews as training data."""
