"""``gliomaprog``: argument parsing only, one file per command group."""
