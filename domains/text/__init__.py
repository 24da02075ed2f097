"""Domain adapters over the robustkit core (filled in by their issues)."""
