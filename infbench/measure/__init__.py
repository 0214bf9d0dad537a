"""What watches a run: the monitors, the Locust driver, the phase log, the manifest, and the
model alone."""
