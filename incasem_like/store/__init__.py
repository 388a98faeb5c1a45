"""OME-Zarr datasets: create, open, metadata, completeness."""
