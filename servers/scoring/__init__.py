"""The scoring study: the scoring APIs (sync and async), the model APIs, the feature seeder."""
