"""Pure functions over a run's files: summaries, stability, trust, verdicts, breakdowns."""
