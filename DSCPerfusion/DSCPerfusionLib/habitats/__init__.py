"""Perfusion habitats from the whole DSC time-signal curve (seed 002: Yun et al. 2023, AJNR).

Each lesion voxel's curve, rescaled by the brain's white-matter signal, is compressed by a small 1-D convolutional
autoencoder; k-means on the latent features gives the patterns of the contrast-enhancing (CEL) and non-enhancing
(NEL) lesion, and each pattern is named by comparing its curve parameters with reference tissues of the same brain.
``labels`` holds the habitat vocabulary; torch is imported only where the autoencoder is built or trained.
"""
