"""File-level runners: read files, call the libraries, write the results atomically."""
