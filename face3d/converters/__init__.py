"""Converters from the published morphable models to face3d's format (:class:`ModelArrays`).

* :func:`convert_ict` — ICT-FaceKit (MIT), the default model (:mod:`face3d.converters.ict`);
* :func:`convert_sfm` — Surrey Face Model 3448 from eos (:mod:`face3d.converters.sfm`);
* :func:`convert_bfm` — Basel Face Model 2009 in the Deng et al. layout (:mod:`face3d.converters.bfm`).

Each returns arrays in mm in the toolkit's model frame with CCW outward triangles, per-corner
UVs, 68 iBUG landmark ids and jaw contour candidates; :mod:`face3d.model_zoo` caches them.
"""
from face3d.converters.bfm import convert_bfm
from face3d.converters.ict import convert_ict
from face3d.converters.sfm import convert_sfm

__all__ = ["convert_bfm", "convert_ict", "convert_sfm"]
