"""Perfusion habitats from the whole DSC time-signal curve (seed 002: Yun et al. 2023, AJNR).

Each lesion voxel's curve, rescaled by the brain's white-matter signal, is compressed by a small 1-D convolutional
autoencoder; k-means on the latent features gives the patterns of the contrast-enhancing (CEL) and non-enhancing
(NEL) lesion, and each pattern is named by comparing its curve parameters with reference tissues of the same brain.

Modules (pure numpy/scipy unless said; torch is imported only by ``autoencoder`` and by the functions that train or
apply a model; scikit-learn only when k-means is fitted):

* ``labels``: the vocabulary (HABITATS, REGIONS) and the naming rules (``label_pattern``, table in its docstring);
* ``curves``: ``normalised_curves`` (60 points, 1.5 s apart, bolus on point 11, white matter = 1) and
  ``curve_parameters`` (baseline, drop, drop speed, recovery);
* ``references``: ``find_reference_tissues`` (artery, grey matter, white matter, CSF from the series itself),
  ``reference_curves``, ``reference_parameters``;
* ``autoencoder`` (torch): ``CurveAutoencoder``, ``train_autoencoder``, ``encode``;
* ``clustering``: ``fit_kmeans`` (k by silhouette), ``assign``;
* ``model``: ``HabitatModel``, ``save_model`` / ``load_model`` (JSON + npz, no pickle);
* ``pipeline``: ``compute_habitats`` (one case), ``train_habitat_model`` (a cohort of ``HabitatTrainingCase``).
"""
