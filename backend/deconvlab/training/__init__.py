"""Training the paper's way (Sec. 3), evaluating, and publishing a model with its card."""
