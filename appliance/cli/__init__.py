"""The `appliance` command line (moving here from `api/` under the layout renovation)."""
