"""Models split into pipeline stages, plus the training data they read. Imports nothing of ours."""
