"""turn/providers package."""
