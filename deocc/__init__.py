"""deocc: placeholder package; see ../shared/SPEC.md."""
