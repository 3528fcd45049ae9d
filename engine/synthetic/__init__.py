"""Synthetic images: installed generators and seeded generation (generator.py), their quality in the shipped
classifier's feature space, memorisation checks against the training images (quality.py), and the synthetic
minority images a training run can add (training.py)."""
