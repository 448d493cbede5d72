"""DSC perfusion MRI science (pure numpy/scipy): signal -> deltaR2*, rCBV, nCBV, and a DSC simulator.

No Slicer, Qt or VTK imports: arrays carry time on the first axis, ``[t, ...]``; times and TE in seconds.
"""
