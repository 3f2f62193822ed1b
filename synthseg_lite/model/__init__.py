"""Network, loss and Lightning module."""
