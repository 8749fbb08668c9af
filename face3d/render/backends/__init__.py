"""Rasterizer backends; use :func:`face3d.render.get_rasterizer` rather than importing them."""
