"""FFW - Finding Fantastic Weights (Nahon et al., ECCV 2024)."""
