"""One module per mode (a sweep, a capacity search, request profiling): orchestration only."""
