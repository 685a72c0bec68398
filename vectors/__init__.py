"""Pure NumPy / scikit-learn: groups, top/bottom-k selection, SVM fits, directions, test statistics."""
