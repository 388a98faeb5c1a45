"""Review in neuroglancer: viewer state and the read-only server."""
