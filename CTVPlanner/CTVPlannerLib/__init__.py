"""Radiotherapy target volumes (pure numpy/scipy/SimpleITK): margins in mm on anisotropic grids, CTV schemes
and metrics. No Slicer, Qt or VTK imports; masks are arrays ``[k, j, i]`` with an explicit voxel spacing."""
