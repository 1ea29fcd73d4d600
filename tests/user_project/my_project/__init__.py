"""A researcher's own components, outside the segformer package (README "Extend it")."""
