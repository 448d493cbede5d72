"""Many cases at once: dataset export, training, evaluation, replication, radiomics."""
