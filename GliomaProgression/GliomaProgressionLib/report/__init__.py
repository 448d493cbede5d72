"""What a run shows: the PNG report and the Slicer scene."""
