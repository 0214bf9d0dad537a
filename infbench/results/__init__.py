"""The bottom layer: the result schemas and their history, the versioned readers, the run
store, atomic writes. It imports nothing else of the harness."""
