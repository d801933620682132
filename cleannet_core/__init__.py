"""CleanNet in pure PyTorch/numpy: features, references, model, train, score, classifier, metrics."""
