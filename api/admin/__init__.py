"""Admin routes: keys, models, engines, audit (admin role only)."""
