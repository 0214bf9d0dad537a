"""The inference servers under test, one package per study over one shared part: shared/ (the
model, settings, limits, errors, timings, probes), image/, queue/, scoring/ and tfserving/."""
