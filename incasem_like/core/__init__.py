"""What every layer uses: errors with one formatter, geometry, config files, crash-safe file writes."""
