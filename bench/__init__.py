"""bench: train, measure and compare classifiers with one recipe (`python -m bench`)."""
