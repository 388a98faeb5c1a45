"""The one way every stage runs over a volume: daisy 2 workers, resumable, with retries and a run summary."""
