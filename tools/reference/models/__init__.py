"""PyTorch definitions of the zoo's models, with the original implementations' parameter names."""
