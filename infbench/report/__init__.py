"""The report of a run or two: the tables (as data), Markdown, HTML, plots, the build of a run's
report, compare, thresholds."""
