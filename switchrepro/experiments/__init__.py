"""Paper-side comparison for the experiment runner: published numbers, claim verdicts and the report."""
