"""selfsup: placeholder package; see ../shared/SPEC.md."""
