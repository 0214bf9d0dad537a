"""The shared part of every study's servers: settings, the model, probes, limits, errors,
timings and the command-line parser."""
