"""The voxel-wise invasion map (seed 004, Yan et al. 2020): local radiomics feature maps, labels, classifier."""
