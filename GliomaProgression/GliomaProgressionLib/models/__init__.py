"""Progression model packages and their safe loading, the background process runner, the prediction worker, the training recipe."""
