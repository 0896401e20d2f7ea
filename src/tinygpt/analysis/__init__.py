"""Looking inside models: attention maps, training curves and training-health diagnostics,
as numbers (text, JSON) and as pictures (PNG, matplotlib)."""
