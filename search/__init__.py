"""Stage 2: evolutionary search for the per-layer GLoRA configuration under a parameter budget."""
