"""Hardware-specific speed paths, kept apart from the paper-faithful MoE core (switchrepro/moe)."""
