"""Reusable network pieces shared by the learned parts of the toolkit (feature extractors and
the losses built on them). Import the submodules directly, e.g. :mod:`face3d.nn.vgg`."""
