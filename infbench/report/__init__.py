"""The report of a run or two: tables, Markdown, HTML, plots, compare, thresholds."""
