"""What every layer uses: file writing that survives crashes."""
